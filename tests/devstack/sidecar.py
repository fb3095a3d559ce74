"""Run a spout pipeline's `storage` sidecar (`pachd --mode sidecar`) as a local process.

pachd 2.x refuses commits on a pipeline's output branch unless the pachd serving
the request has PPS_PIPELINE_NAME and PPS_SPEC_COMMIT in its environment: in a
real spout pod only the `storage` container does, and the user container
reaches it through /pachctl/config.json. No kubelet runs here, so this module
builds that container's environment from the worker ReplicationController pachd
created and starts the same pachd binary with it. The sidecar's PID goes into
`state.pids`, so `Stack.down()` stops it too.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import build
from devstack.stack import Pachd, StackError, State, _stop, free_port, wait_until
from devstack.testing import kubectl

# Set in a pod by Kubernetes (service links, the service-account token) rather
# than by the RC, or devstack-specific (ETCD_PREFIX keeps several pachds apart
# in one etcd): the sidecar must see the same values as its main pachd.
FROM_MAIN_PACHD = (
    "ETCD_SERVICE_HOST",
    "ETCD_SERVICE_PORT",
    "ETCD_PREFIX",
    "KUBERNETES_PORT_443_TCP_ADDR",
    "KUBERNETES_PORT",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_BEARER_TOKEN_FILE",
    "PACHD_SERVICE_HOST",
    "PACHD_SERVICE_PORT",
    "METRICS",
)
# The RC sets these to "" so Kubernetes' service links cannot leak in; here the
# sidecar gets the stack's PostgreSQL, which its listener may use.
FILL_IF_EMPTY = ("POSTGRES_HOST", "POSTGRES_PORT")
# Every port pachd's config reads, fresh, so the sidecar never collides with its
# main pachd or another sidecar. Sidecar mode serves gRPC on PEER_PORT only (and
# the S3 gateway on S3GATEWAY_PORT when the pipeline has S3 inputs or output).
PORTS = ("PORT", "PEER_PORT", "PROMETHEUS_PORT", "S3GATEWAY_PORT", "DOWNLOAD_PORT", "OIDC_PORT")


@dataclass
class Sidecar:
    name: str  # key in state.pids
    pipeline: str
    project: str
    rc: str  # the ReplicationController the environment came from
    port: int  # PEER_PORT: what the user container dials (localhost:1653 in a pod)
    pid: int
    log: str
    pachctl_config: str  # this stack's /pachctl/config.json for the spout

    @property
    def address(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"


def start_spout_sidecar(
    state: State, pachd: Pachd, pipeline: str, project: str = "default", deadline_s: float = 60
) -> Sidecar:
    """Start the storage sidecar of the newest worker RC of `project/pipeline` and wait until it serves."""
    name = f"sidecar-{pachd.index}-{project}-{pipeline}"
    if name in state.pids:
        raise StackError(f"{name} already runs (pid {state.pids[name]}); stop it first")
    if not pachd.env:
        raise StackError("this stack's state has no pachd environment: restart it with the current devstack")
    rc = _newest_rc(state, pachd.namespace, pipeline, project, deadline_s)
    rc_name = str(rc["metadata"]["name"])
    pod = rc["spec"]["template"]["spec"]
    storage = next((c for c in pod["containers"] if c["name"] == "storage"), None)
    if storage is None:
        raise StackError(f"replicationcontroller {rc_name} has no `storage` container")

    env = _container_env(state, pachd.namespace, storage, pod_name=f"{rc_name}-devstack")
    for key in FROM_MAIN_PACHD:
        if key in pachd.env:
            env[key] = pachd.env[key]
    for key in FILL_IF_EMPTY:
        if not env.get(key) and pachd.env.get(key):
            env[key] = pachd.env[key]
    env.update({key: str(free_port()) for key in PORTS})
    # The main pachd runs without SSL_CERT_DIR so the RC mounts no TLS Secret; the
    # sidecar must not pick one up from this process either.
    env.pop("SSL_CERT_DIR", None)
    # A pod's container sees only its own environment, not the test runner's.
    base = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR") if key in os.environ}

    logs = Path(state.root, "logs")
    logs.mkdir(exist_ok=True)
    log = logs / f"{name}.log"
    port = int(env["PEER_PORT"])
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(build.program("pachd").path), "--mode", "sidecar"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**base, **env},
            start_new_session=True,  # its own process group, as `_stop` expects
        )
    state.pids[name] = proc.pid
    state.save()
    sidecar = Sidecar(
        name=name,
        pipeline=pipeline,
        project=project,
        rc=rc_name,
        port=port,
        pid=proc.pid,
        log=str(log),
        pachctl_config=str(_write_pachctl_config(state, pachd.namespace, name, pipeline, project, port)),
    )
    try:
        wait_until(name, lambda: _serves(port, pipeline, project), deadline_s, log, proc.pid)
    except BaseException:
        stop_spout_sidecar(state, sidecar)
        raise
    return sidecar


def stop_spout_sidecar(state: State, sidecar: Sidecar) -> None:
    """Stop the sidecar and forget its PID; stopping one that already exited is fine."""
    _stop(sidecar.pid, sidecar.name)
    if state.pids.get(sidecar.name) == sidecar.pid:
        del state.pids[sidecar.name]
        state.save()


def _kubectl_json(state: State, *args: str) -> Any:
    out = kubectl(state, *args, "-o", "json", error=StackError, stderr=False)
    return json.loads(out) if out.strip() else None


def _newest_rc(state: State, namespace: str, pipeline: str, project: str, deadline_s: float) -> Any:
    """The worker RC of the pipeline's highest version; pachd creates it shortly after the pipeline."""
    selector = f"pipelineProject={project},pipelineName={pipeline}"
    end = time.monotonic() + deadline_s
    while True:
        listed = _kubectl_json(state, "get", "replicationcontrollers", "-n", namespace, "-l", selector)
        items = listed["items"]
        if items:
            return max(items, key=lambda rc: int(rc["metadata"]["labels"].get("pipelineVersion", "0")))
        if time.monotonic() > end:
            raise StackError(f"no replicationcontroller with labels {selector} in namespace {namespace}")
        time.sleep(0.3)


def _secret(state: State, namespace: str, name: str) -> dict[str, str] | None:
    raw = _kubectl_json(state, "get", "secret", name, "-n", namespace, "--ignore-not-found")
    if raw is None:
        return None
    return {k: base64.b64decode(v).decode() for k, v in (raw.get("data") or {}).items()}


def _container_env(state: State, namespace: str, container: Any, pod_name: str) -> dict[str, str]:
    """The environment the kubelet would give the container: envFrom first, then env in order."""
    env: dict[str, str] = {}
    secrets: dict[str, dict[str, str] | None] = {}

    def secret(name: str) -> dict[str, str] | None:
        if name not in secrets:
            secrets[name] = _secret(state, namespace, name)
        return secrets[name]

    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            # pachd references pachyderm-storage-secret unconditionally; it exists only
            # for cloud object stores, and the LOCAL backend needs nothing from it.
            env.update(secret(source["secretRef"]["name"]) or {})
    fields = {"status.podIP": "127.0.0.1", "metadata.name": pod_name, "metadata.namespace": namespace}
    for var in container.get("env") or []:
        value_from = var.get("valueFrom")
        if value_from is None:
            env[var["name"]] = var.get("value", "")
        elif "fieldRef" in value_from:
            env[var["name"]] = fields[value_from["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            data = secret(ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise StackError(f"{var['name']}: secret {namespace}/{ref['name']} has no key {ref['key']!r}")
            env[var["name"]] = data[ref["key"]]
        else:
            raise StackError(f"{var['name']}: unsupported valueFrom {value_from}")
    return env


def _write_pachctl_config(
    state: State, namespace: str, name: str, pipeline: str, project: str, port: int
) -> Path:
    """What a spout pod mounts at /pachctl/config.json, pointed at this sidecar.

    pachd writes `localhost:1653` (the default peer port) into that Secret; here the
    sidecar's peer port is a free one.
    """
    secret = _secret(state, namespace, f"spout-pachctl-secret-{project}-{pipeline}") or {}
    config = json.loads(secret.get("config.json") or "{}") or {
        "v2": {"active_context": "default", "contexts": {"default": {"project": project}}}
    }
    v2 = config["v2"]
    v2["contexts"][v2["active_context"]]["pachd_address"] = f"127.0.0.1:{port}"
    v2["metrics"] = False  # no metrics from tests
    path = Path(state.root, "sidecars", name, "config.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def _serves(port: int, pipeline: str, project: str) -> bool:
    import python_pachyderm
    from grpc_health.v1 import health_pb2

    # Sidecar mode registers no admin API (no inspect_cluster); health plus a PFS
    # read that needs PostgreSQL are both unary, so they really connect.
    client = python_pachyderm.Client("127.0.0.1", port, use_default_host=False)
    if client.health_check().status != health_pb2.HealthCheckResponse.SERVING:
        return False
    client.inspect_repo(pipeline, project)
    return True
