"""Unit tests of the operator's own configuration (SPOUT_OPERATOR_* environment variables)."""

from __future__ import annotations

import pytest
from spout_operator.settings import Settings, SettingsError


def test_defaults_with_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert not hasattr(settings, "pachd_address") and not hasattr(settings, "pachd_auth_token")
    assert settings.operator_namespace == "spout-operator-system"  # outside a pod
    assert settings.connection_check_interval_s == 30.0
    assert settings.drift_interval_s == 30.0
    assert settings.drift_interval_s <= 30  # the product asks for drift checks every 30 s or less
    assert settings.pachd_timeout_s == 10.0
    assert settings.retry_delay_s == 15.0
    assert settings.namespaces == ()
    assert settings.worker_namespaces == ()
    assert settings.worker_health is True  # judged wherever worker namespaces are set


def test_unprefixed_and_unrelated_variables_are_ignored() -> None:
    env = {"NAMESPACE": "x", "DRIFT_INTERVAL_SECONDS": "oops", "SPOUT_OPERATOR_OTHER": "1"}
    assert Settings.from_env(env) == Settings()


def test_every_variable_is_read() -> None:
    env = {
        "SPOUT_OPERATOR_NAMESPACE": "  pachyderm-ops  ",
        "SPOUT_OPERATOR_CONNECTION_CHECK_SECONDS": "12",
        "SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS": "5",
        "SPOUT_OPERATOR_PACHD_TIMEOUT_SECONDS": "2.5",
        "SPOUT_OPERATOR_RETRY_DELAY_SECONDS": " 30 ",
        "SPOUT_OPERATOR_NAMESPACES": "team-a,team-b",
        "SPOUT_OPERATOR_WORKER_NAMESPACES": " pachyderm , ",
        "SPOUT_OPERATOR_WORKER_HEALTH": "false",
    }
    assert Settings.from_env(env) == Settings(
        operator_namespace="pachyderm-ops",
        connection_check_interval_s=12.0,
        drift_interval_s=5.0,
        pachd_timeout_s=2.5,
        retry_delay_s=30.0,
        namespaces=("team-a", "team-b"),
        worker_namespaces=("pachyderm",),
        worker_health=False,
    )


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_values_mean_the_default(blank: str) -> None:
    env = {
        "SPOUT_OPERATOR_NAMESPACE": blank,
        "SPOUT_OPERATOR_CONNECTION_CHECK_SECONDS": blank,
        "SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS": blank,
        "SPOUT_OPERATOR_PACHD_TIMEOUT_SECONDS": blank,
        "SPOUT_OPERATOR_RETRY_DELAY_SECONDS": blank,
        "SPOUT_OPERATOR_NAMESPACES": blank,
        "SPOUT_OPERATOR_WORKER_HEALTH": blank,
    }
    assert Settings.from_env(env) == Settings()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ()),
        ("default", ("default",)),
        ("a,b", ("a", "b")),
        (" a , b ,", ("a", "b")),
        (",,a,,", ("a",)),
        (" , ", ()),
    ],
)
def test_namespaces_list(raw: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"SPOUT_OPERATOR_NAMESPACES": raw}).namespaces == expected


@pytest.mark.parametrize(("raw", "seconds"), [("0.1", 0.1), ("1", 1.0), ("86400", 86400.0), ("1e2", 100.0)])
def test_bounds_are_inclusive(raw: str, seconds: float) -> None:
    assert Settings.from_env({"SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS": raw}).drift_interval_s == seconds


@pytest.mark.parametrize("name", ["DRIFT_INTERVAL_SECONDS", "PACHD_TIMEOUT_SECONDS", "RETRY_DELAY_SECONDS"])
@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("ten", "must be a number of seconds"),
        ("10s", "must be a number of seconds"),
        ("1,5", "must be a number of seconds"),
        ("0", "between 0.1 and 86400"),
        ("0.05", "between 0.1 and 86400"),
        ("-5", "between 0.1 and 86400"),
        ("86401", "between 0.1 and 86400"),
        ("nan", "between 0.1 and 86400"),
        ("inf", "between 0.1 and 86400"),
    ],
)
def test_bad_numbers_name_the_variable(name: str, raw: str, complaint: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({f"SPOUT_OPERATOR_{name}": raw})
    message = str(caught.value)
    assert f"SPOUT_OPERATOR_{name}" in message
    assert complaint in message
    assert repr(raw) in message


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS", "3")
    monkeypatch.setenv("SPOUT_OPERATOR_NAMESPACES", "ops")
    settings = Settings.from_env()
    assert settings.drift_interval_s == 3.0
    assert settings.namespaces == ("ops",)


@pytest.mark.parametrize("name", ["SPOUT_OPERATOR_PACHD_ADDRESS", "SPOUT_OPERATOR_PACHD_AUTH_TOKEN"])
def test_a_pachd_address_or_token_in_the_environment_is_refused(name: str) -> None:
    # They belong in a ClusterPachdConnection now; a token left here would be a credential
    # the operator holds for nobody. The message must not repeat the value.
    with pytest.raises(SettingsError, match="ClusterPachdConnection") as caught:
        Settings.from_env({name: "s3cret-value"})
    assert "s3cret-value" not in str(caught.value)
    assert Settings.from_env({name: "  "}) == Settings()


def test_repr_holds_no_credential_fields() -> None:
    assert "token" not in repr(Settings()).lower()


def test_leader_election_and_its_lease() -> None:
    settings = Settings.from_env(
        {"SPOUT_OPERATOR_LEADER_ELECTION": "true", "POD_NAMESPACE": "spout-operator-system"}
    )
    assert settings.leader_election
    assert (settings.lease_namespace, settings.lease_name) == ("spout-operator-system", "spout-operator")
    assert Settings.from_env({"SPOUT_OPERATOR_LEASE_NAMESPACE": "x"}).lease_namespace == "x"
    assert not Settings.from_env({}).leader_election


def test_leader_election_must_be_a_boolean() -> None:
    with pytest.raises(SettingsError, match="SPOUT_OPERATOR_LEADER_ELECTION"):
        Settings.from_env({"SPOUT_OPERATOR_LEADER_ELECTION": "maybe"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("1", True),
        (" Yes ", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("NO", False),
        ("off", False),
    ],
)
def test_worker_health_flag(raw: str, expected: bool) -> None:
    assert Settings.from_env({"SPOUT_OPERATOR_WORKER_HEALTH": raw}).worker_health is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "t"])
def test_worker_health_must_be_a_boolean(raw: str) -> None:
    with pytest.raises(
        SettingsError, match=f"SPOUT_OPERATOR_WORKER_HEALTH must be true or false, got '{raw.lower()}'"
    ):
        Settings.from_env({"SPOUT_OPERATOR_WORKER_HEALTH": raw})
