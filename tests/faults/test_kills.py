"""The operator killed, stopped and replaced: nothing lost, nothing orphaned, nothing twice."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
from devstack.stack import State
from devstack.testing import PACHD_WRITES, PASSES, OperatorProcess, counted, delta, eventually, kubectl
from faults.faultkit import UNREACHABLE, Api, Pachd, body, figure, ready

pytestmark = pytest.mark.faults

KILLS = 20
PAIRS = 4  # 8 pipelines: a community pachd holds 16


def declared(api: Api) -> dict[str, dict[str, Any]]:
    """What the resources that are not being deleted declare: pipeline name -> processor env."""
    result: dict[str, dict[str, Any]] = {}
    for obj in api.items():
        if obj["metadata"].get("deletionTimestamp"):
            continue
        spec = obj["spec"]
        result[spec["spout"]["name"]] = {}
        result[spec["processor"]["name"]] = spec["processor"]["transform"].get("env") or {}
    return result


def converged(api: Api, pachd: Pachd, prefix: str) -> str:
    """'' once pachd holds exactly the declared pipelines, as declared, all RUNNING, and every
    resource is Ready at its generation; else what is still off."""
    items = api.items()
    if any(o["metadata"].get("deletionTimestamp") for o in items):
        return "a deletion is still pending"
    not_ready = [o["metadata"]["name"] for o in items if not ready(o)]
    if not_ready:
        return f"not Ready: {not_ready}"
    want = declared(api)
    found = pachd.pipelines(prefix)
    if set(found) != set(want):
        return f"pachd holds {sorted(found)}, declared {sorted(want)}"
    for name, env in want.items():
        if name.endswith("-p") and dict(found[name].details.transform.env) != env:
            return f"{name} runs env {dict(found[name].details.transform.env)}, declared {env}"
        if found[name].stopped:
            return f"{name} is stopped"
    return ""


def test_sigkilled_20_times_during_a_burst_pachd_ends_exactly_as_declared(
    stack: State, ns: str, prefix: str, operators: Callable[..., OperatorProcess]
) -> None:
    api, pachd, rng = Api(stack, ns), Pachd(stack), random.Random(13)
    stop = threading.Event()
    done: list[str] = []

    def burst() -> None:
        """Applies, edits and deletes, all through the kills."""
        serial = 0
        while not stop.is_set():
            live = [o["metadata"]["name"] for o in api.items() if not o["metadata"].get("deletionTimestamp")]
            serial += 1
            try:
                if len(live) < PAIRS:
                    api.create(body(f"r{serial}", prefix, env={"ROUND": str(serial)}))
                    done.append("create")
                elif rng.random() < 0.75:
                    env = {"ROUND": str(serial)}
                    api.patch(rng.choice(live), {"spec": {"processor": {"transform": {"env": env}}}})
                    done.append("edit")
                else:
                    api.delete(rng.choice(live))
                    done.append("delete")
            except kubernetes.client.ApiException:
                pass  # a name being deleted, say: the next round does something else
            # pachd works through each change's Kubernetes objects a few requests a second:
            # a faster burst only builds pachd a backlog, it tests the operator no more.
            stop.wait(rng.uniform(0.5, 2.0))

    worker = threading.Thread(target=burst, daemon=True)
    worker.start()
    kills = 0
    try:
        while kills < KILLS:
            operator = operators()
            operator.wait_healthy()
            # A random moment of its work: the moment is what varies, no condition marks it.
            time.sleep(rng.uniform(0.2, 4.0))
            operator.kill()
            kills += 1
    finally:
        stop.set()
        worker.join(30)
    figure("operator_sigkills", kills)
    figure("burst_operations", {k: done.count(k) for k in ("create", "edit", "delete")})

    started = time.monotonic()
    final = operators()
    eventually(lambda: converged(api, pachd, prefix) == "", 300, 1.0, what="pachd as declared")
    figure("kills_converged_after_restart_s", round(time.monotonic() - started, 1))
    # Nothing more to do: the next three sweeps change nothing in pachd.
    versions = {n: p.version for n, p in pachd.pipelines(prefix).items()}
    counters = final.scrape()
    after = counted(final.scrape, PASSES, 3 * len(api.items()), 60, counters, trigger="drift")
    assert delta(counters, after, PACHD_WRITES) == 0
    assert {n: p.version for n, p in pachd.pipelines(prefix).items()} == versions
    assert final.alive()


def test_sigterm_with_500_resources_exits_within_10_s(
    stack: State, ns: str, prefix: str, operators: Callable[..., OperatorProcess]
) -> None:
    count = 500
    items = [body(f"r{i}", prefix, address=UNREACHABLE) for i in range(count)]
    for start in range(0, count, 100):
        listing = {"apiVersion": "v1", "kind": "List", "items": items[start : start + 100]}
        kubectl(stack, "apply", "-n", ns, "-f", "-", input=json.dumps(listing))
    api = Api(stack, ns)
    operator = operators()
    operator.wait_healthy()
    eventually(
        lambda: sum(1 for o in api.items() if (o.get("status") or {}).get("summary")) == count,
        300,
        1.0,
        what=f"{count} resources handled",
    )
    exit_s = operator.terminate(30)
    assert operator.proc is not None and operator.proc.returncode == 0, operator.output()[-2000:]
    figure("sigterm_exit_s_at_500", round(exit_s, 2))
    assert exit_s < 10, f"took {exit_s:.1f}s to exit"
