"""Run the SAMD operator: ``python -m samd.operator`` (the container's entry point)."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

import kopf

from samd.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="samd-operator",
        description="Reconcile SecureModels: verify signatures, keep keys, RBAC, NetworkPolicies, "
        "certificates and a hardened serving Deployment in place.",
        epilog="Configuration comes from SAMD_* environment variables (see docs/operator.md). "
        "The Kubernetes connection comes from the in-cluster service account or KUBECONFIG.",
    )
    parser.add_argument("--namespace", action="append", help="watch only these namespaces (default: all)")
    parser.add_argument("--liveness", default=os.environ.get("SAMD_LIVENESS", "http://0.0.0.0:8080/healthz"))
    parser.add_argument("--log-level", default=os.environ.get("SAMD_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["auto", "json", "text"], default="auto")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format, component="operator")

    from samd.operator import handlers, policies  # noqa: F401, PLC0415 - importing registers the handlers with kopf

    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace or (),
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
