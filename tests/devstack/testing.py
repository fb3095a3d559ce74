"""What every test tier shares besides fixtures: whether this is CI, kubectl against a
stack, polling for a condition, and the kubeconfig the in-process client reads. (A module,
not conftest.py: each tier has a conftest.py of its own, and `from devstack.testing import` would
get whichever pytest loaded last.)"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from devstack.stack import State

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def kubectl(stack: State, *args: str, input: str | None = None, check: bool = True) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", stack.kubeconfig, *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def eventually(
    check: Callable[[], Any], timeout_s: float = 60, interval_s: float = 0.3, what: str = ""
) -> Any:
    """Poll `check` until it returns a truthy value; fail with the last value or error."""
    end = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
            if last:
                return last
        except Exception as err:  # the condition may raise until it holds
            last = err
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}: last saw {last!r}")


@contextlib.contextmanager
def use_kubeconfig(path: str) -> Iterator[None]:
    """Point KUBECONFIG, and the in-process kubernetes client library, at `path`.

    The library reads KUBECONFIG once, when it is imported (here: while tests are
    collected, long before the stack exists), and kopf's default login goes through it.
    Without this the in-process operator would use ~/.kube/config, or find nothing.
    """
    from kubernetes.config import kube_config

    saved = os.environ.get("KUBECONFIG"), kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ["KUBECONFIG"] = kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path
    try:
        yield
    finally:
        env, kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved
        if env is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = env
