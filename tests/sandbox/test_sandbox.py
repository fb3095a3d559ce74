"""`make sandbox` comes up, reaches Ready, shows commits arriving, and leaves nothing behind.

Its own pytest session (marker `sandbox`): the sandbox starts a stack of its own, and
pachd 2.6 allows only one per machine (see README, known limits).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sandbox_runs_and_tears_down(stack_prerequisites: None) -> None:
    from devstack import node as nodes
    from devstack.testing import IN_CI

    reason = nodes.unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI must run the sandbox, but {reason}")
        pytest.skip(reason)
    state_dir = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
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
        pids = json.loads((state_dir / "state.json").read_text())["pids"]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 0, output
    # Ready with both workers up (the operator watches their pods in pachd's namespace).
    assert "spout101   spout   RUNNING       processor   RUNNING           True    2/2" in output, output
    # The consumer runs in its pod (the node's), not as a local process.
    assert re.search(r"default-spout-v1-\S+\s+2/2\s+Running", output), output
    assert max(int(n) for n in re.findall(r"now has (\d+) commit", output)) >= 2, output
    assert max(int(n) for n in re.findall(r"now holds (\d+) processed", output)) >= 4, output
    assert {"etcd", "kube-apiserver", "postgres", "pachd-0", "operator", "kubelet", "containerd"} <= set(pids)
    assert "consumer" not in pids
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert json.loads((state_dir / "state.json").read_text())["pids"] == {}
