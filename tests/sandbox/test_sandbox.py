"""`make sandbox` comes up, reaches Ready, shows commits arriving, and leaves nothing behind,
and does so again in the same clone: once run with its output piped and interrupted (the
reader gone first, as `make sandbox | tee log` stopped by Ctrl-C), then once more.

Its own pytest session (marker `sandbox`): the sandbox starts a stack of its own, and
pachd 2.6 allows only one per machine (see README, known limits).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_sandbox(state_dir: Path, reader_gone: bool) -> tuple[str, dict[str, Any], int]:
    """One `make sandbox` until the processor holds 4 messages, then Ctrl-C; its output, the
    state it recorded while running, and its exit code."""
    env = {**os.environ, "DEVSTACK_DIR": str(state_dir), "SPOUT_INTERVAL_MIN": "1", "SPOUT_INTERVAL_MAX": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.sandbox"],
        cwd=ROOT / "tests",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Started the way a shell starts a background job (SIGINT ignored): Ctrl-C, the
        # SIGINT below, must stop it all the same.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            seen.append(line)
            processed = re.search(r"now holds (\d+) processed", line)
            if (processed and int(processed.group(1)) >= 4) or time.monotonic() > deadline:
                break
    finally:
        running = json.loads((state_dir / "state.json").read_text())
        if reader_gone:
            proc.stdout.close()  # every later write of the sandbox meets a closed pipe
        proc.send_signal(signal.SIGINT)
        if reader_gone:
            proc.wait(timeout=180)
            rest = ""
        else:
            rest, _ = proc.communicate(timeout=180)
    return "".join(seen) + rest, running, proc.returncode


def assert_left_clean(state_dir: Path, running: dict[str, Any]) -> None:
    pids = running["pids"]
    assert {"etcd", "kube-apiserver", "postgres", "pachd-0", "operator", "kubelet", "containerd"} <= set(pids)
    assert "consumer" not in pids
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert json.loads((state_dir / "state.json").read_text())["pids"] == {}
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    made = [link["netns"] for link in running.get("links", [])]
    assert made and not [name for name in made if name in namespaces], namespaces
    assert not (state_dir / "etcd").exists()  # the next run starts from a cluster it can trust


def test_sandbox_runs_again_and_again_in_one_clone(stack_prerequisites: None) -> None:
    from devstack import node as nodes
    from devstack.testing import IN_CI

    reason = nodes.unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI must run the sandbox, but {reason}")
        pytest.skip(reason)
    state_dir = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    try:
        runs_twice(state_dir)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def runs_twice(state_dir: Path) -> None:
    output, running, code = run_sandbox(state_dir, reader_gone=True)
    assert code == 0, output
    assert "spoutpipeline.spout-operator.dev/spout101 created" in output, output
    assert_left_clean(state_dir, running)

    output, running, code = run_sandbox(state_dir, reader_gone=False)
    assert code == 0, output
    # A fresh cluster, not the last run's objects ("unchanged", Ready before pachd held anything).
    assert "spoutpipeline.spout-operator.dev/spout101 created" in output, output
    # Ready with both workers up (the operator watches their pods in pachd's namespace).
    assert "spout101   spout   RUNNING       processor   RUNNING           True    2/2" in output, output
    # The consumer runs in its pod (the node's), not as a local process.
    assert re.search(r"default-spout-v1-\S+\s+2/2\s+Running", output), output
    assert max(int(n) for n in re.findall(r"now has (\d+) commit", output)) >= 2, output
    assert max(int(n) for n in re.findall(r"now holds (\d+) processed", output)) >= 4, output
    assert "Stopping everything the sandbox started" in output, output
    assert_left_clean(state_dir, running)
