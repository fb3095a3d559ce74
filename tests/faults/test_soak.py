"""A short soak (`make soak` runs the long one): churn, and what the operator holds."""

from __future__ import annotations

import pytest
from devstack.stack import State
from soak.soak import SoakOptions, run

pytestmark = pytest.mark.faults


def test_short_soak_releases_what_churn_takes(stack: State) -> None:
    options = SoakOptions(
        minutes=0.5,
        resources=40,
        endpoints=5,
        real=1,
        batch=6,
        round_s=2.0,
        sample_s=5.0,
        drift_interval_s=2.0,
        gateway_idle_s=6.0,
    )
    result = run(stack, options)
    assert result["operator_alive"]
    assert result["churn"]["created"] > options.resources and result["churn"]["deleted"] > 0
    # Idle gateways closed: once churn stops, a channel per endpoint still in use, no more.
    assert result["settled_channels"] <= result["endpoints_in_use"], result
