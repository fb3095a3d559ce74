"""What can be checked of the operator image without a Docker engine."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "operator" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def test_every_stage_is_pinned_and_multi_stage() -> None:
    # FROM ${BASE}: `make images` passes a Debian-made base, plain Docker uses the ARG's default.
    bases = [arg.split()[0] for op, arg in instructions() if op == "FROM"]
    assert len(bases) >= 2 and set(bases) == {"${BASE}"}, bases
    defaults = [
        arg.partition("=")[2] for op, arg in instructions() if op == "ARG" and arg.startswith("BASE=")
    ]
    assert len(defaults) == 1 and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", defaults[0]), defaults


def test_copied_sources_exist() -> None:
    for op, arg in instructions():
        if op == "COPY" and not arg.startswith("--from"):
            source = arg.split()[0]
            assert (ROOT / source).exists(), source


def test_runs_as_non_root_and_the_entry_point_imports() -> None:
    ops = dict(instructions())
    assert ops["USER"].split(":")[0] not in ("0", "root")
    assert ops["ENTRYPOINT"] == '["python", "-m", "spout_operator"]'


def test_the_entry_point_refuses_a_bad_setting_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS", "soon")
    assert importlib.import_module("spout_operator.__main__").main() == 2
    assert "SPOUT_OPERATOR_DRIFT_INTERVAL_SECONDS" in capsys.readouterr().err


def test_runtime_requirements_are_pinned() -> None:
    requirements = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert requirements and all("==" in line for line in requirements)
