"""The operator suite's reference: a kopf operator whose one handler only marks a trivial object handled.

It runs the way the SAMD operator runs (`python -m bench.noop_operator`, a subprocess, cluster-wide,
the same logging set-up) but keeps kopf's default settings and does no work of its own: its figures
are the floor that kopf, the API server and this machine set for handling N objects.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from typing import Any

import kopf

from samd.logs import configure_logging

GROUP = "bench.samd.dev"
VERSION = "v1"
KIND = "Noop"
PLURAL = "noops"
CRD_NAME = f"{PLURAL}.{GROUP}"


def crd_manifest() -> dict[str, Any]:
    """A namespaced CRD with a status subresource and an open schema: the smallest thing kopf can handle."""
    open_object = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": "noop", "listKind": f"{KIND}List"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": open_object, "status": open_object},
                        }
                    },
                }
            ],
        },
    }


def is_handled(obj: dict[str, Any]) -> bool:
    """What the benchmark waits for: the handler's status patch has reached the API server."""
    return bool((obj.get("status") or {}).get("handled"))


async def mark_handled(patch: kopf.Patch, **_: Any) -> None:
    patch.status["handled"] = True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_operator", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("SAMD_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["auto", "json", "text"], default="json")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    # Registered here rather than at import, so that importing this module (for the CRD) registers
    # nothing; kopf's default registry also brings its default login handlers.
    kopf.on.create(GROUP, VERSION, PLURAL, id="mark-handled")(mark_handled)
    asyncio.run(kopf.operator(standalone=True, clusterwide=True, liveness_endpoint=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
