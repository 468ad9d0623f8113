"""Run SAMD's Argo CD health checks (deploy/argocd/*.lua) the way Argo CD does: Lua 5.1, `obj` global."""

from __future__ import annotations

from typing import Any

import lupa.lua51 as lua

from tests.support.cluster import REPO

ARGOCD = REPO / "deploy" / "argocd"
SCRIPTS = {
    "SecureModel": ARGOCD / "securemodel-health.lua",
    "ModelTrustPolicy": ARGOCD / "modeltrustpolicy-health.lua",
}


def _to_lua(runtime: Any, value: Any) -> Any:
    """JSON as Argo CD hands it to Lua: objects become tables, arrays 1-based tables."""
    if isinstance(value, dict):
        return runtime.table_from({key: _to_lua(runtime, item) for key, item in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, item) for item in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of the health check for one object, as read from the API server."""
    runtime = lua.LuaRuntime(unpack_returned_tuples=False)
    runtime.globals().obj = _to_lua(runtime, obj)
    script = SCRIPTS[obj["kind"]].read_text()
    result = runtime.execute(script)
    return str(result["status"]), str(result["message"])
