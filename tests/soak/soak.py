"""Soak the operator: create/edit/delete churn for a long time, and what the process holds.

    cd tests && ../.venv/bin/python -m soak.soak [--minutes 30] [--resources 300]

The operator runs as a subprocess (as in the benchmark) watching namespace `soak`. Every
round deletes a batch of resources, creates as many new ones (new uids) and edits another
batch. Most resources name one of --endpoints pachd addresses on loopback where nothing
listens (each address is a gRPC channel of its own; Orphan policy, so they delete at once);
--real of them are pairs on the stack's pachd, created, edited and deleted for real.

Every --sample-seconds it records the operator's RSS, threads, open file descriptors and
gRPC channels (spout_operator_pachd_channels), and reports them at start and end with their
least-squares slope per 10 minutes over the run after its first fifth (the warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import kubernetes
from bench.bench import GROUP, IMAGE, PLURAL, VERSION, Options, kubectl, start_operator, wait_for
from devstack import metrics, testing
from devstack.stack import Stack, State
from devstack.testing import OperatorProcess, spout_pipeline

from soak import ROOT

NAMESPACE = "soak"
METRICS = ("rss_mb", "threads", "fds", "channels")


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 30.0
    resources: int = 300
    endpoints: int = 20
    real: int = 2  # pairs on the real pachd (16 pipelines per community pachd)
    batch: int = 15  # deleted, created and edited per round
    round_s: float = 5.0
    sample_s: float = 10.0
    drift_interval_s: float = 5.0
    gateway_idle_s: float = 20.0


say = functools.partial(testing.say, who="soak", clock=True)

REAL = "soak-pachd"  # the soak namespace's PachdConnection to the stack's pachd


def connection(name: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PachdConnection",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"address": address, "policy": {"projects": {"allowDefault": True}}},
    }


def body(name: str, address: str | None, image: str = IMAGE) -> dict[str, Any]:
    # Through the namespace's PachdConnection for that address (named by its port).
    spec: dict[str, Any] = {
        "connectionRef": {"kind": "PachdConnection", "name": REAL if address is None else endpoint(address)}
    }
    if address is not None:
        spec["deletionPolicy"] = "Orphan"  # nothing can exist at an address where nothing listens
    return spout_pipeline(name, f"{name}-s", f"{name}-p", namespace=NAMESPACE, image=image, **spec)


def sample(operator: OperatorProcess) -> dict[str, float]:
    pid = operator.pid
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in status if ":" in line}
    return {
        "t": time.monotonic(),
        "rss_mb": int(fields["VmRSS"][0]) / 1024,
        "threads": int(fields["Threads"][0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "channels": operator.scrape().get("spout_operator_pachd_channels", 0.0),
    }


def slope_per_10min(samples: list[dict[str, float]], key: str) -> float:
    """Least-squares slope of `key` over the samples after the warm-up, per 10 minutes."""
    kept = samples[len(samples) // 5 :] if len(samples) >= 5 else samples
    if len(kept) < 2:
        return 0.0
    ts = [s["t"] for s in kept]
    ys = [s[key] for s in kept]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return 0.0 if var == 0 else 600 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var


def endpoint(address: str) -> str:
    return f"soak-ep-{address.rsplit(':', 1)[1]}"


class Churn:
    def __init__(self, state: State, options: SoakOptions, tag: str) -> None:
        client = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)  # type: ignore[no-untyped-call]
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.options, self.tag, self.state = options, tag, state
        self.live: dict[str, str | None] = {}  # name -> address (None: the real pachd)
        self.serial = 0
        self.rng = random.Random(13)
        self.counts = {"created": 0, "edited": 0, "deleted": 0}
        self.connections: set[str] = set()  # the endpoints' PachdConnections that exist

    def address(self) -> str:
        """One of --endpoints addresses, from a window that moves on as resources are made:
        old endpoints fall out of use, and their channels must be closed."""
        window = self.serial // max(1, self.options.resources // 2)
        return f"grpc://127.0.0.1:{40000 + window + self.rng.randrange(self.options.endpoints)}"

    def endpoints_in_use(self) -> int:
        """Distinct pachd endpoints the live resources name (the default one for real pairs)."""
        return len({a or "default" for a in self.live.values()})

    def create(self, real: bool = False) -> None:
        self.serial += 1
        name = f"{self.tag}-{self.serial}"
        address = None if real else self.address()
        if address is not None and endpoint(address) not in self.connections:
            self.api.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "pachdconnections", connection(endpoint(address), address)
            )
            self.connections.add(endpoint(address))
        self.api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body(name, address))
        self.live[name] = address
        self.counts["created"] += 1

    def delete(self, name: str) -> None:
        with contextlib.suppress(kubernetes.client.ApiException):
            self.api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        del self.live[name]
        self.counts["deleted"] += 1

    def edit(self, name: str) -> None:
        image = f"{IMAGE.rsplit(':', 1)[0]}:0.1.{self.rng.randrange(1, 9)}"
        role = "processor" if self.live[name] is None else self.rng.choice(["spout", "processor"])
        patch = {"spec": {role: {"transform": {"image": image}}}}
        with contextlib.suppress(kubernetes.client.ApiException):
            self.api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name, patch)
            self.counts["edited"] += 1

    def fill(self) -> None:
        for i in range(self.options.resources):
            self.create(real=i < self.options.real)

    def round(self) -> None:
        real = [n for n, a in self.live.items() if a is None]
        unreal = [n for n, a in self.live.items() if a is not None]
        for name in self.rng.sample(unreal, min(self.options.batch, len(unreal))):
            self.delete(name)
            self.create()
        for name in self.rng.sample(list(self.live), min(self.options.batch, len(self.live))):
            self.edit(name)
        if real and self.rng.random() < 0.3:  # a real pair is replaced now and then
            self.delete(self.rng.choice(real))
            self.create(real=True)
        # An endpoint no resource names any more goes with its connection (as an admin would
        # retire one): its channel must then be closed.
        for name in self.connections - {endpoint(a) for a in self.live.values() if a is not None}:
            with contextlib.suppress(kubernetes.client.ApiException):
                self.api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "pachdconnections", name)
            self.connections.discard(name)

    def items(self) -> list[dict[str, Any]]:
        found: Any = self.api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
        return list(found["items"])


def run(state: State, options: SoakOptions, out: Path | None = None) -> dict[str, Any]:
    """Churn against the running stack; print and return the figures (JSON to `out`)."""
    tag = f"soak{uuid.uuid4().hex[:4]}"
    log = Path(state.root) / "logs" / f"soak-operator-{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    testing.install_crds(state, error=RuntimeError)
    kubectl(state, "create", "namespace", NAMESPACE, check=False)
    kubectl(state, "apply", "-f", "-", input=json.dumps(connection(REAL, state.pachds[0].address)))
    operator = start_operator(
        state,
        Options(drift_interval_s=options.drift_interval_s, pachds=1),
        log,
        namespace=NAMESPACE,
        extra_env={"SPOUT_OPERATOR_GATEWAY_IDLE_SECONDS": str(options.gateway_idle_s)},
    )
    churn = Churn(state, options, tag)
    samples: list[dict[str, float]] = []
    try:
        operator.wait_healthy(60, error=RuntimeError)
        churn.fill()
        wait_for(
            f"{options.resources} resources with a status",
            lambda: all(o.get("status", {}).get("summary") for o in churn.items()),
            300,
            1.0,
        )
        samples.append(sample(operator))
        say(f"start: {samples[0]}")
        end = time.monotonic() + 60 * options.minutes
        next_sample = time.monotonic() + options.sample_s
        while time.monotonic() < end:
            churn.round()
            if not operator.alive():
                raise RuntimeError(f"operator exited; see {log}")
            if time.monotonic() >= next_sample:
                samples.append(sample(operator))
                next_sample += options.sample_s
            time.sleep(options.round_s)  # the churn's pace: a round every --round-s, by design
        samples.append(sample(operator))
        # Churn over: once the idle time has passed, only the endpoints in use keep a channel.
        # Waited for up to that long; if it never holds, the figure says so.
        in_use = churn.endpoints_in_use()
        with contextlib.suppress(RuntimeError):
            wait_for(
                f"at most {in_use} pachd channels",
                lambda: metrics.total(operator.scrape(), "spout_operator_pachd_channels") <= in_use,
                options.gateway_idle_s + 3 * options.drift_interval_s,
                0.5,
            )
        settled = sample(operator)
        alive = operator.alive()
    finally:
        with contextlib.suppress(Exception):
            kubectl(state, "delete", PLURAL, "--all", "-n", NAMESPACE, "--timeout=180s")
        operator.terminate(20)
        kubectl(state, "delete", "namespace", NAMESPACE, "--wait=false", check=False)
        with contextlib.suppress(Exception):
            import python_pachyderm

            client = python_pachyderm.Client(state.pachds[0].host, state.pachds[0].port)
            for p in client.list_pipeline():
                if str(p.pipeline.name).startswith(tag) and str(p.pipeline.name).endswith("-p"):
                    client.delete_pipeline(p.pipeline.name, force=True)
            for p in client.list_pipeline():
                if str(p.pipeline.name).startswith(tag):
                    client.delete_pipeline(p.pipeline.name, force=True)
    first, last = samples[0], samples[-1]
    result: dict[str, Any] = {
        "parameters": asdict(options),
        "minutes": (last["t"] - first["t"]) / 60,
        "churn": churn.counts,
        "samples": len(samples),
        "start": {k: first[k] for k in METRICS},
        "end": {k: last[k] for k in METRICS},
        "max": {k: max(s[k] for s in samples) for k in METRICS},
        "slope_per_10min": {k: round(slope_per_10min(samples, k), 3) for k in METRICS},
        "settled_channels": settled["channels"],
        "endpoints_in_use": churn.endpoints_in_use(),
        "operator_alive": alive,
    }
    say(json.dumps({k: v for k, v in result.items() if k != "parameters"}))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result, "series": samples}, indent=2))
        say(f"results saved to {out}")
    return result


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.soak", description=__doc__)
    defaults = SoakOptions()
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--resources", type=int, default=defaults.resources)
    parser.add_argument("--endpoints", type=int, default=defaults.endpoints)
    parser.add_argument("--pachds", type=int, default=2, help="pachds in the stack (2: each in a netns)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "soak.json")
    args = parser.parse_args(argv)
    options = SoakOptions(minutes=args.minutes, resources=args.resources, endpoints=args.endpoints)
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="soak-stack-"))
    stack = Stack(root)
    try:
        say(f"starting a local stack in {root}")
        run(stack.up(pachd_count=args.pachds), options, args.out)
    except (RuntimeError, KeyboardInterrupt) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
