"""Every module of the package has a place in the floor plan `make lint` checks: import-linter
checks only the modules a layer names, so a module left out would escape the layers."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "spout_operator"


def layered() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    return {name.strip() for layer in layers for name in layer.split(":")}


def test_every_module_of_the_package_is_in_a_layer() -> None:
    modules = {f"spout_operator.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert modules - layered() == set(), "add them to a layer in pyproject.toml"
    assert layered() - modules == set(), "layers name modules that do not exist"
