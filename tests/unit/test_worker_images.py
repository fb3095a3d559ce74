"""What can be checked of the spout101 image without a Docker engine."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = ROOT / "images" / "spout101"
DOCKERFILE = CONTEXT / "Dockerfile"
REQUIREMENTS = CONTEXT / "requirements.txt"
ENTRY_MODULES = ("spout101.consumer", "spout101.processor", "spout101.receiver")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, args = stripped.partition(" ")
            pairs.append((keyword.upper(), args.strip()))
    return pairs


def test_copy_sources_exist_in_the_build_context() -> None:
    copies = [args for keyword, args in instructions() if keyword in ("COPY", "ADD")]
    assert copies, "the Dockerfile copies nothing"
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (CONTEXT / source).exists(), f"COPY source {source} missing from {CONTEXT}"


def test_base_image_is_a_pinned_slim_python() -> None:
    # FROM ${BASE}: `make images` passes a Debian-made base, plain Docker uses the ARG's default.
    bases = [args for keyword, args in instructions() if keyword == "FROM"]
    assert bases == ["${BASE}"]
    defaults = [
        args.partition("=")[2]
        for keyword, args in instructions()
        if keyword == "ARG" and args.startswith("BASE=")
    ]
    assert len(defaults) == 1
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", defaults[0]), defaults[0]


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [args for keyword, args in instructions() if keyword == "USER"]
    assert users, "no USER instruction: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_default_cmd_is_an_entry_module() -> None:
    cmds = [args for keyword, args in instructions() if keyword == "CMD"]
    assert len(cmds) == 1
    cmd = json.loads(cmds[0])
    assert cmd[:2] == ["python", "-m"] and cmd[2] in ENTRY_MODULES


def test_every_module_the_dockerfile_names_is_an_entry_module() -> None:
    # Comments included: they tell pipeline authors which cmd to use.
    named = set(re.findall(r"-m\"?,?\s*\"?(spout101\.\w+)", DOCKERFILE.read_text()))
    assert named == set(ENTRY_MODULES)


@pytest.mark.parametrize("module_name", ENTRY_MODULES)
def test_entry_modules_refuse_a_bad_setting_with_exit_code_2(
    module_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`python -m` runs `main`: with a knob it cannot use, it says so and exits 2 at once."""
    module = importlib.import_module(module_name)
    monkeypatch.setenv("SPOUT101_LOG_LEVEL", "LOUDEST")
    assert module.main() == 2
    assert "SPOUT101_LOG_LEVEL" in caplog.text
    # The copied package is what the image imports: the module must live inside it.
    assert Path(module.__file__ or "").resolve().is_relative_to(CONTEXT / "spout101")


@pytest.mark.parametrize("module_name", ENTRY_MODULES)
def test_entry_modules_run_with_python_dash_m(module_name: str, tmp_path: Path) -> None:
    # A bad knob makes each exit at once with code 2, which proves `python -m` reaches main().
    env = {
        **os.environ,
        "PYTHONPATH": str(CONTEXT),
        "SPOUT_INTERVAL_MIN": "soon",
        "RECEIVER_PORT": "soon",
        "PROCESSOR_INPUT_DIR": str(tmp_path / "missing"),
    }
    result = subprocess.run(
        [sys.executable, "-m", module_name], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "Invalid configuration" in result.stderr


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", line)
        assert match, f"requirement not pinned with ==: {line!r}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def test_requirements_are_pinned_and_hold_the_client() -> None:
    pins = requirement_pins()
    assert pins["python-pachyderm"] == "7.5.0"
    assert pins["protobuf"].startswith("3."), "python-pachyderm 7.x needs protobuf<4"


def test_requirements_cover_the_clients_dependencies() -> None:
    pins = requirement_pins()
    declared = importlib.metadata.requires("python-pachyderm") or []
    for requirement in declared:
        if "python_version" in requirement:
            continue  # markers for Pythons older than the image's
        name = re.split(r"[ (<>=;~!]", requirement, maxsplit=1)[0].lower()
        assert name in pins, f"python-pachyderm needs {name}, which requirements.txt does not pin"


def test_requirements_match_what_the_tests_run_against() -> None:
    for name, version in requirement_pins().items():
        assert importlib.metadata.version(name) == version, f"{name}: image pins {version}"
