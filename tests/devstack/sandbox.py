"""The whole thing on one machine: `make sandbox`.

Starts the local stack, installs the CRDs and RBAC, the ClusterPachdConnection
`default` (manifests/connection.yaml, pointed at the local pachd), runs the operator
with its ServiceAccount's own credentials, applies crds/samples/spout.yaml, waits
for Ready, and runs the spout's consumer code locally (through a local copy of the
spout pod's pachd sidecar) so commits visibly arrive in the `spout` repo.

No kubelet runs here, so no pod ever starts: pachd creates the workers'
ReplicationControllers and reports the pipelines RUNNING, but the processor's
jobs never execute. Ctrl-C (or `make sandbox-down`) stops everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack import build
from devstack.__main__ import DEFAULT_DIR
from devstack.sidecar import start_spout_sidecar
from devstack.stack import Stack, StackError, State, _spawn, free_port, service_account_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "crds" / "samples" / "spout.yaml"
NAMESPACE = "default"


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", flush=True)


def kubectl(state: State, *args: str) -> str:
    return kubectl_input(state, None, *args)


def kubectl_input(state: State, stdin: str | None, *args: str) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", state.kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise StackError(f"kubectl {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def record(state: State, name: str, pid: int) -> None:
    """Processes in state.pids are stopped by `devstack down`, like the servers."""
    state.pids[name] = pid
    state.save()


def default_connection(state: State) -> str:
    """manifests/connection.yaml, with the local pachd's address for the Helm chart's."""
    shipped = (ROOT / "manifests" / "connection.yaml").read_text()
    return shipped.replace("grpc://pachd.default.svc.cluster.local:30650", state.pachds[0].address)


def start_operator(state: State) -> None:
    say("Installing the CRDs, namespace and RBAC (kubectl apply)")
    kubectl(state, "apply", "-k", str(ROOT / "crds"))
    for manifest in ("namespace.yaml", "rbac.yaml"):
        kubectl(state, "apply", "-n", "spout-operator-system", "-f", str(ROOT / "manifests" / manifest))
    for crd in ("spoutpipelines", "pachdconnections", "clusterpachdconnections"):
        kubectl(state, "wait", "--for=condition=Established", f"crd/{crd}.spout-operator.dev")
    say(f"ClusterPachdConnection default -> {state.pachds[0].address} (manifests/connection.yaml)")
    kubectl_input(state, default_connection(state), "apply", "-f", "-")
    # The operator runs as its ServiceAccount, not as admin: the RBAC in manifests/ is what it gets.
    kubeconfig = service_account_kubeconfig(state, "spout-operator-system", "spout-operator")
    env = {
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": str(ROOT / "operator"),
        "SPOUT_OPERATOR_NAMESPACE": "spout-operator-system",
        "SPOUT_OPERATOR_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
        # A free port, not 9090: another operator on this machine may hold that one.
        "SPOUT_OPERATOR_METRICS_PORT": str(free_port()),
    }
    log = Path(state.root) / "logs" / "operator.log"
    record(state, "operator", _spawn([sys.executable, "-m", "spout_operator"], log, env=env))
    say(f"Operator started (log: {log})")


def start_consumer(state: State) -> None:
    sidecar = start_spout_sidecar(state, state.pachds[0], "spout")
    env = {
        "PYTHONPATH": str(ROOT / "images" / "spout101"),
        "SPOUT_PACHD_ADDRESS": sidecar.address,
        "PPS_PIPELINE_NAME": "spout",
    }
    log = Path(state.root) / "logs" / "consumer.log"
    record(state, "consumer", _spawn([sys.executable, "-m", "spout101.consumer"], log, env=env))
    say(f"Consumer started against the spout's sidecar {sidecar.address} (log: {log})")


def main() -> int:
    # Ctrl-C must stop the sandbox however it was started: a shell starts background jobs
    # with SIGINT ignored, and Python then leaves it ignored (a CI run hung that way).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = Stack(Path(os.environ.get("DEVSTACK_DIR", str(DEFAULT_DIR))))
    stack.down()  # whatever an earlier sandbox left behind
    say("Starting the local stack (etcd, kube-apiserver, kube-controller-manager, PostgreSQL, pachd)")
    try:
        state = stack.up()
        start_operator(state)
        say("kubectl apply -f crds/samples/spout.yaml")
        print(kubectl(state, "apply", "-n", NAMESPACE, "-f", str(SAMPLE)), end="")
        kubectl(
            state,
            "wait",
            "-n",
            NAMESPACE,
            "--for=condition=Ready",
            "--timeout=120s",
            "spoutpipeline/spout101",
        )
        say("kubectl get spoutpipelines")
        print(kubectl(state, "get", "spoutpipelines", "-n", NAMESPACE), end="")
        pachctl = [str(build.program("pachctl").path)]
        pach_env = {**os.environ, "PACH_CONFIG": state.pachctl_config}
        say("pachctl list pipeline")
        subprocess.run([*pachctl, "list", "pipeline"], env=pach_env, check=False)
        start_consumer(state)
        say("Poke around in another terminal:")
        for key, value in state.env().items():
            print(f"    export {key}={value}")
        print(
            "    kubectl describe spoutpipeline spout101\n    kubectl get clusterpachdconnections\n"
            f"    {pachctl[0]} list commit spout"
        )
        say("Commits arriving in spout@master (every 10-30 s); Ctrl-C stops everything")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        seen = 0
        while True:
            out = subprocess.run(
                [*pachctl, "list", "commit", "spout@master"],
                env=pach_env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            commits = max(0, len(out.splitlines()) - 1)
            if commits != seen:
                print(f"    spout@master now has {commits} commit(s)", flush=True)
                seen = commits
            time.sleep(5)
    except KeyboardInterrupt:
        say("Stopping everything the sandbox started")
    except (StackError, build.BuildError, subprocess.SubprocessError) as err:
        # SubprocessError: also a kubectl that timed out (TimeoutExpired), which used to skip
        # the teardown and leave the whole stack running, pachd holding port 1658
        print(f"error: {err}", file=sys.stderr)
        stack.down()
        return 1
    stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
