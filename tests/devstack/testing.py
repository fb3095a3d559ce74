"""The helpers every test tier, the bench, the soak and the sandbox share, each written once:
progress lines (`say`), kubectl against a stack (and a SpoutPipeline's annotations), waiting
for a condition (`eventually`, and on the operator's own counters: `counted`), the kubeconfig
the in-process client reads, and the operator as a subprocess (`OperatorProcess`). (A module,
not conftest.py: each tier has a conftest.py of its own, and `from conftest import` would get
whichever pytest loaded last.)

Nothing here imports devstack.stack at run time: devstack.build and devstack.images, which
devstack.stack imports, take `say` from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack import metrics

if TYPE_CHECKING:
    from devstack.stack import State

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PASSES = "spout_operator_reconciles_total"  # one sample per finished pass, by trigger and result
PACHD_WRITES = "spout_operator_pachd_writes_total"
STATUS_WRITES = "spout_operator_status_writes_total"


def say(
    message: str, who: str | None = None, *, clock: bool = False, stderr: bool = False, plain: bool = False
) -> None:
    """One progress line, flushed at once: `[who] message`, `[who HH:MM:SS] message` with
    `clock`; without `who`, the sandbox's bold `==> message` for a person at a terminal
    (`plain`: the message as it is)."""
    if plain:
        line = message
    elif who is None:
        line = f"\033[1m==> {message}\033[0m"
    else:
        line = f"[{who}{time.strftime(' %H:%M:%S') if clock else ''}] {message}"
    # `make sandbox | tee log`, and tee was stopped: carry on (the teardown above all), unheard
    with contextlib.suppress(BrokenPipeError):
        print(line, file=sys.stderr if stderr else sys.stdout, flush=True)


def kubectl(
    stack: State,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60,
    error: type[Exception] = AssertionError,
    stderr: bool = True,
) -> str:
    """kubectl against the stack: its stdout, and its stderr after it unless `stderr=False`
    (where kubectl says "NotFound", "No resources found"). A failure raises `error` when
    `check`."""
    result = subprocess.run(
        ["kubectl", "--kubeconfig", stack.kubeconfig, *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise error(f"kubectl {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout + (result.stderr if stderr else "")


# The API server's refusal as the kubernetes client and kopf log it ("(403)", "Reason:
# Forbidden", "403 Forbidden"), and not any "403": a log line's milliseconds (",403]") are not one.
REFUSAL = re.compile(r"Forbidden|\(403\)|\b403 ")


def refusals(output: str) -> list[str]:
    """The lines of an operator's output that report a refusal by the API server."""
    return [line for line in output.splitlines() if REFUSAL.search(line)]


# The release the CHANGELOG records before this one, and its commit: the upgrade tests start there.
PREVIOUS_RELEASE = "2c0822d"
PREVIOUS_VERSION = "0.1.0"


def previous_tree(paths: tuple[str, ...], target: Path) -> Path:
    """The files under `paths` as the previous release had them, written below `target`."""
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", PREVIOUS_RELEASE, *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for path in listing:
        out = target / path
        out.parent.mkdir(parents=True, exist_ok=True)
        shown = ["git", "show", f"{PREVIOUS_RELEASE}:{path}"]
        out.write_bytes(subprocess.run(shown, cwd=ROOT, capture_output=True, check=True).stdout)
    return target


PAUSED = "spout-operator.dev/paused"  # the operating handle that holds pachd still


def annotate(stack: State, namespace: str, name: str, *pairs: str) -> None:
    """Set (`key=value`, over any value it had) or remove (`key-`) a SpoutPipeline's
    annotations: how a person pauses, resumes or nudges it."""
    kubectl(stack, "annotate", "--overwrite", "-n", namespace, "spoutpipeline", name, *pairs)


def eventually(
    check: Callable[[], Any],
    timeout_s: float = 60,
    interval_s: float = 0.3,
    what: str = "",
    *,
    error: type[Exception] = AssertionError,
    retry: type[Exception] | tuple[type[Exception], ...] = Exception,
) -> Any:
    """Poll `check` until it returns a truthy value, and return that value. An exception of
    a `retry` type means "not yet" (the condition may raise until it holds); any other
    propagates. On the deadline: `error`, with the last value or exception seen."""
    end = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
            if last:
                return last
        except retry as err:
            last = err
        time.sleep(interval_s)
    raise error(f"timed out after {timeout_s:g}s waiting for {what or check}: last saw {last!r}")


def holds_throughout(check: Callable[[], Any], seconds: float, interval_s: float, what: str) -> None:
    """Assert `check` holds at every look for `seconds`: a state that must last (a freeze of a
    chosen length), not one to wait for, so the time itself is the point."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert check(), f"{what} stopped holding after {seconds - (end - time.monotonic()):.1f}s"
        time.sleep(interval_s)


def counted(
    read: Callable[[], dict[str, float]],
    name: str,
    more: float,
    timeout_s: float = 60,
    since: dict[str, float] | None = None,
    error: type[Exception] = AssertionError,
    **labels: str,
) -> dict[str, float]:
    """Wait until the operator's counter `name` (summed over the samples with `labels`) is
    `more` above what it was at `since` (default: now), as `read` scrapes it; return that
    scrape. How tests show that nothing happens: N more finished passes, and no write."""
    before = metrics.total(since if since is not None else read(), name, **labels)

    def grown() -> dict[str, float] | None:
        now = read()
        return now if metrics.total(now, name, **labels) - before >= more else None

    what = f"{more:g} more {name} {labels or ''}"
    found: dict[str, float] = eventually(grown, timeout_s, 0.2, what, error=error)
    return found


def delta(before: dict[str, float], after: dict[str, float], name: str, **labels: str) -> float:
    return metrics.total(after, name, **labels) - metrics.total(before, name, **labels)


@contextlib.contextmanager
def use_kubeconfig(path: str) -> Iterator[None]:
    """Point KUBECONFIG, and the in-process kubernetes client library, at `path`.

    The library reads KUBECONFIG once, when it is imported (here: while tests are
    collected, long before the stack exists), and kopf's default login goes through it.
    Without this the in-process operator would use ~/.kube/config, or find nothing.
    """
    import pytest
    from kubernetes.config import kube_config

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", path)
        patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", path)
        yield


class OperatorProcess:
    """`python -m spout_operator` as a subprocess (its own session, so it can be SIGKILLed,
    frozen, and its RSS is its own), watching `namespace`, with its metrics and liveness
    endpoints on free ports. `env` adds to and overrides the SPOUT_OPERATOR_* settings;
    nothing of the caller's own SPOUT_OPERATOR_* environment reaches it."""

    def __init__(self, state: State, namespace: str, log: Path, **env: str) -> None:
        from devstack.stack import free_port

        self.state, self.namespace, self.log = state, namespace, log
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.env = {
            "PYTHONPATH": str(ROOT / "operator"),
            "KUBECONFIG": state.kubeconfig,
            "SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS": "2",
            "SPOUT_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "SPOUT_OPERATOR_LIVENESS": f"http://127.0.0.1:{self.liveness_port}/healthz",
            "SPOUT_OPERATOR_NAMESPACES": namespace,
            "SPOUT_OPERATOR_WORKER_NAMESPACES": state.pachds[0].namespace,
            # No node on this stack: worker pods never exist, so Ready cannot wait for them.
            "SPOUT_OPERATOR_WORKER_HEALTH": "false",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOUT_OPERATOR_")}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spout_operator"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**env, **self.env},
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any] | None:
        """What its liveness endpoint answers; None while it does not."""
        try:
            url = f"http://127.0.0.1:{self.liveness_port}/healthz"
            with urllib.request.urlopen(url, timeout=3) as response:
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
                return answer
        except OSError:
            return None

    def wait_healthy(self, timeout_s: float = 60, error: type[Exception] = AssertionError) -> None:
        """Until its liveness endpoint answers. kopf serves it once the startup handlers are
        done (metrics are served by then) and releases its watches at the same moment."""

        def up() -> bool:
            if not self.alive():
                raise error(f"operator exited ({self.proc and self.proc.returncode}); see {self.log}")
            return self.health() is not None

        eventually(up, timeout_s, 0.2, what="operator liveness endpoint", error=error, retry=())

    def scrape(self) -> dict[str, float]:
        return metrics.scrape(self.metrics_port)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for the operator (pid {self.pid})")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Frozen (SIGSTOP): it sees and writes nothing until resumed."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, its whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout_s: float = 30) -> float:
        """SIGTERM; seconds until it exited (SIGKILL after timeout_s)."""
        assert self.proc is not None, "not started"
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return time.monotonic() - started

    def output(self) -> str:
        return self.log.read_text(errors="replace")


CRD_PLURALS = ("spoutpipelines", "pachdconnections", "clusterpachdconnections")


def install_crds(stack: State, error: type[Exception] = AssertionError) -> None:
    """`kubectl apply -k crds/`, then wait until the API server serves all three kinds."""
    kubectl(stack, "apply", "-k", str(ROOT / "crds"), error=error)
    for plural in CRD_PLURALS:
        # `kubectl wait` errors out (rather than waits) while a new CRD has no conditions yet.
        established = [
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            f"crd/{plural}.spout-operator.dev",
        ]
        eventually(
            lambda args=established: "condition met" in kubectl(stack, *args, check=False),  # type: ignore[misc]
            60,
            what=f"CRD {plural} established",
            error=error,
        )


IMAGE = "ghcr.io/spout-operator/spout101:0.1.0"


def spout_pipeline(
    name: str,
    spout: str,
    processor: str,
    *,
    namespace: str | None = None,
    image: str = IMAGE,
    processor_env: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A SpoutPipeline running spout101's consumer and processor; `spec` adds to its spec
    (connectionRef, deletionPolicy, state, ...)."""
    spout_transform = {"image": image, "cmd": ["python", "-m", "spout101.consumer"]}
    processor_transform: dict[str, Any] = {"image": image, "cmd": ["python", "-m", "spout101.processor"]}
    if processor_env is not None:
        processor_transform["env"] = processor_env
    return {
        "apiVersion": "spout-operator.dev/v1alpha1",
        "kind": "SpoutPipeline",
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
        "spec": {
            "spout": {"name": spout, "transform": spout_transform},
            "processor": {"name": processor, "transform": processor_transform},
            **spec,
        },
    }
