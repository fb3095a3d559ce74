"""The whole thing on one machine: `make sandbox`.

Starts the local stack with a node (containerd, kubelet: pods really run),
installs the CRDs and RBAC, the ClusterPachdConnection `default`
(manifests/connection.yaml, pointed at the local pachd), runs the operator with
its ServiceAccount's own credentials, applies crds/samples/spout.yaml and waits
for Ready. pachd's worker pods then run on the node: the spout's consumer commits
from inside its pod, the processor's jobs run in theirs. The sandbox shows the
pods, the commits arriving in `spout` and the processor's output growing. Ctrl-C
(or `make sandbox-down`) stops everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from devstack import build, images, testing
from devstack.__main__ import DEFAULT_DIR
from devstack.stack import Stack, StackError, State, _spawn, free_port, service_account_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "crds" / "samples" / "spout.yaml"
NAMESPACE = "default"
PACHD_NAMESPACE = "pachyderm"  # where the stack's pachd makes its workers


say = testing.say  # the bold `==> message` lines


def kubectl(state: State, *args: str) -> str:
    return kubectl_input(state, None, *args)


def kubectl_input(state: State, stdin: str | None, *args: str) -> str:
    return testing.kubectl(state, *args, input=stdin, timeout=360, error=StackError, stderr=False)


def record(state: State, name: str, pid: int) -> None:
    """Processes in state.pids are stopped by `devstack down`, like the servers."""
    state.pids[name] = pid
    state.save()


def default_connection(state: State) -> str:
    """manifests/connection.yaml, with the local pachd's address for the Helm chart's."""
    shipped = (ROOT / "manifests" / "connection.yaml").read_text()
    # It admits no namespace and grants no pachd project until told: the sample's namespace,
    # and pachd's default project (the sample names none).
    assert "  namespaces: []\n" in shipped and "  policy: {}\n" in shipped
    return (
        shipped.replace("grpc://pachd.default.svc.cluster.local:30650", state.pachds[0].address)
        .replace("  namespaces: []\n", f"  namespaces: [{NAMESPACE}]\n")
        .replace("  policy: {}\n", "  policy: {projects: {allowDefault: true}}\n")
    )


def start_operator(state: State) -> None:
    say("Installing the CRDs, namespace and RBAC (kubectl apply)")
    kubectl(state, "apply", "-k", str(ROOT / "crds"))
    for manifest in ("namespace.yaml", "rbac.yaml"):
        kubectl(state, "apply", "-n", "spout-operator-system", "-f", str(ROOT / "manifests" / manifest))
    # Read-only access to pachd's worker RCs and pods, moved to pachd's namespace as the README says.
    workers_rbac = (ROOT / "manifests" / "workers-rbac.yaml").read_text()
    kubectl_input(
        state, workers_rbac.replace("namespace: default", f"namespace: {PACHD_NAMESPACE}"), "apply", "-f", "-"
    )
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
        # pachd's workers: RC events repair drift at once, their pods' health is in status.
        "SPOUT_OPERATOR_WORKER_NAMESPACES": PACHD_NAMESPACE,
        "SPOUT_OPERATOR_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
        # A free port, not 9090: another operator on this machine may hold that one.
        "SPOUT_OPERATOR_METRICS_PORT": str(free_port()),
    }
    log = Path(state.root) / "logs" / "operator.log"
    record(state, "operator", _spawn([sys.executable, "-m", "spout_operator"], log, env=env))
    say(f"Operator started (log: {log})")


def sample() -> dict[str, Any]:
    """crds/samples/spout.yaml as it is, but for two things a small machine needs: modest
    resource requests (pachd's default is a CPU per worker; the pair would not fit on two
    cores), and, when SPOUT_INTERVAL_MIN/MAX are set here, the consumer's interval."""
    body: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    for part in ("spout", "processor"):
        body["spec"][part]["resourceRequests"] = {"cpu": 0.2, "memory": "128Mi"}
    env = {k: os.environ[k] for k in ("SPOUT_INTERVAL_MIN", "SPOUT_INTERVAL_MAX") if os.environ.get(k)}
    if env:
        body["spec"]["spout"]["transform"]["env"] = env
    return body


def show_pods(state: State) -> None:
    out = kubectl(state, "get", "pods", "-n", "pachyderm", "-l", "app=pipeline", "-o", "wide")
    print(out, end="", flush=True)


def count_files(pachctl: list[str], env: dict[str, str], target: str) -> int:
    out = subprocess.run(
        [*pachctl, "list", "file", target], env=env, capture_output=True, text=True, check=False, timeout=60
    ).stdout
    return max(0, len(out.splitlines()) - 1)


def teardown(stack: Stack) -> None:
    """Stop everything; a second Ctrl-C (or a SIGTERM) must not cut the teardown short and
    leave the node's processes, cgroups and namespaces behind."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    stack.down()


def main() -> int:
    # Ctrl-C must stop the sandbox however it was started: a shell starts background jobs
    # with SIGINT ignored, and Python then leaves it ignored (a CI run hung that way).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = Stack(Path(os.environ.get("DEVSTACK_DIR", str(DEFAULT_DIR))))
    stack.down()  # whatever an earlier sandbox left behind, its cluster state included
    say(
        "Starting the local stack with a node (etcd, kube-apiserver, controllers, scheduler, "
        "PostgreSQL, pachd, containerd, kubelet; images from `make images`)"
    )
    try:
        state = stack.up(node=True)
        start_operator(state)
        say("kubectl apply -f crds/samples/spout.yaml (with modest resource requests)")
        print(kubectl_input(state, json.dumps(sample()), "apply", "-n", NAMESPACE, "-f", "-"), end="")
        kubectl(
            state,
            "wait",
            "-n",
            NAMESPACE,
            "--for=condition=Ready",
            "--timeout=300s",
            "spoutpipeline/spout101",
        )
        say("kubectl get spoutpipelines")
        print(kubectl(state, "get", "spoutpipelines", "-n", NAMESPACE), end="")
        pachctl = [str(build.program("pachctl").path)]
        pach_env = {**os.environ, "PACH_CONFIG": state.pachctl_config}
        say("pachctl list pipeline")
        subprocess.run([*pachctl, "list", "pipeline"], env=pach_env, check=False)
        say("kubectl get pods -n pachyderm (pachd's workers, on the node)")
        # `kubectl wait` fails at once, rather than waits, while no pod matches yet.
        testing.eventually(
            lambda: kubectl(
                state, "get", "pods", "-n", "pachyderm", "-l", "app=pipeline", "-o", "name"
            ).strip(),
            300,
            1.0,
            what="pachd's worker pods",
        )
        kubectl(
            state,
            "wait",
            "-n",
            "pachyderm",
            "--for=condition=Ready",
            "--timeout=300s",
            "pod",
            "-l",
            "app=pipeline",
        )
        show_pods(state)
        say("Poke around in another terminal:")
        for key, value in state.env().items():
            print(f"    export {key}={value}")
        print(
            "    kubectl get pods -n pachyderm\n"
            "    kubectl logs -n pachyderm -l pipelineName=spout -c user\n"
            "    kubectl describe spoutpipeline spout101\n    kubectl get clusterpachdconnections\n"
            f"    {pachctl[0]} list commit spout\n    {pachctl[0]} list file processor@master:/1K.txt/"
        )
        say("Commits arriving in spout@master, the processor's output growing; Ctrl-C stops everything")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        seen = (0, 0)
        while True:
            out = subprocess.run(
                [*pachctl, "list", "commit", "spout@master"],
                env=pach_env,
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            ).stdout
            commits = max(0, len(out.splitlines()) - 1)
            if commits != seen[0]:
                print(f"    spout@master now has {commits} commit(s)", flush=True)
            processed = count_files(pachctl, pach_env, "processor@master:/1K.txt/") + count_files(
                pachctl, pach_env, "processor@master:/2K.txt/"
            )
            if processed != seen[1]:
                print(f"    processor@master now holds {processed} processed message(s)", flush=True)
            seen = (commits, processed)
            time.sleep(5)
    except KeyboardInterrupt:
        say("Stopping everything the sandbox started")
        return 0
    except BrokenPipeError:
        # Its output went away (`make sandbox | tee log`, and tee was stopped by the same
        # Ctrl-C): stop as for Ctrl-C, writing nothing more to that pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (StackError, build.BuildError, images.ImageError, subprocess.SubprocessError) as err:
        # SubprocessError: also a kubectl that timed out (TimeoutExpired), which used to skip
        # the teardown and leave the whole stack running, pachd holding port 1658
        say(f"error: {err}", stderr=True, plain=True)
        return 1
    finally:
        teardown(stack)


if __name__ == "__main__":
    sys.exit(main())
