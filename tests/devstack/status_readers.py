"""What the tools users read status with make of a SpoutPipeline: kstatus (the real
library, through the small command gomod/kstatus builds) and Argo CD's health script
(run by a Lua 5.1 interpreter, the dialect of Argo CD's gopher-lua)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devstack import build

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ROOT / "manifests" / "argocd" / "resource_customizations" / "spout-operator.dev" / "SpoutPipeline"


def kstatus(objects: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    """kstatus' verdict ({status, message}) for each object, in order."""
    binary = build.program("kstatus").path
    if not binary.exists():
        build.build(["kstatus"])
    result = subprocess.run(
        [str(binary)], input=json.dumps(objects), capture_output=True, text=True, check=True, timeout=30
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


def argocd_health(obj: Mapping[str, Any], script: Path = HEALTH / "health.lua") -> dict[str, str]:
    """Run the health script as Argo CD does: the resource in the global `obj`, the
    script's returned table is the health ({status, message})."""
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    health = lua.execute(script.read_text())
    return {"status": str(health["status"]), "message": str(health["message"] or "")}


def _to_lua(lua: Any, value: Any) -> Any:
    """JSON-shaped Python -> Lua tables (arrays from 1), as Argo CD hands a resource over."""
    if isinstance(value, Mapping):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value
