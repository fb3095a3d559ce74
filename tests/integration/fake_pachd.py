"""A gRPC server on 127.0.0.1 that records every call's method and metadata.

It answers pachd's version and WhoAmI (accepting one token, if given) so a connection to
it can be Ready, and fails every other call as unavailable: enough to see which tokens
reach which address, without a pachd.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from devstack.stack import free_port
from python_pachyderm.proto.v2.auth import auth_pb2
from python_pachyderm.proto.v2.version.versionpb import version_pb2


@dataclass(frozen=True)
class Call:
    method: str
    metadata: dict[str, str]

    @property
    def token(self) -> str | None:
        return self.metadata.get("authn-token")


class FakePachd(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, accepted_token: str | None = None) -> None:
        self.accepted_token = accepted_token
        self.port = free_port()
        self.address = f"grpc://127.0.0.1:{self.port}"
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        self._server.add_generic_rpc_handlers((self,))
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    def __enter__(self) -> FakePachd:
        self._server.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._server.stop(grace=None)

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def tokens(self) -> set[str | None]:
        return {call.token for call in self.calls}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = str(details.method)
        with self._lock:
            self._calls.append(Call(method, {k: str(v) for k, v in details.invocation_metadata}))

        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            if method == "/versionpb_v2.API/GetVersion":
                return bytes(version_pb2.Version(major=2, minor=6, micro=0).SerializeToString())
            if method == "/auth_v2.API/WhoAmI":
                if self.accepted_token is None:
                    context.abort(grpc.StatusCode.UNIMPLEMENTED, "the auth service is not activated")
                token = dict(context.invocation_metadata()).get("authn-token")
                if token != self.accepted_token:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "provided auth token is corrupted")
                return bytes(auth_pb2.WhoAmIResponse(username="robot:fake").SerializeToString())
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake pachd: records calls, serves none")
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)
