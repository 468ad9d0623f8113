"""Run the SAMD operator: ``python -m samd.operator`` (the container's entry point)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import kopf
from aiohttp import web

from samd.logs import configure_logging

log = logging.getLogger("samd.operator")

LOST_LEADERSHIP = 3
"""The exit status of a replica that lost its Lease: its pod restarts it as a fresh standby."""


@asynccontextmanager
async def standby_liveness(url: str | None) -> AsyncIterator[None]:
    """Answer the liveness probe while standing by; kopf serves it once this replica leads."""
    if not url:
        yield
        return
    parsed = urllib.parse.urlsplit(url)

    async def healthy(_: web.Request) -> web.Response:
        return web.json_response({"leader": False})

    app = web.Application()
    app.router.add_get(parsed.path or "/", healthy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, parsed.hostname, parsed.port or 80).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def run_kopf(args: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    await kopf.operator(
        standalone=True,  # kopf's peering would pause every replica of one priority; the Lease elects
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness or None,
        stop_flag=stop,
    )


async def run_elected(args: argparse.Namespace) -> int:
    """Stand by until this replica holds the Lease, then run kopf's handlers while it does."""
    from samd.operator.kube import connect  # noqa: PLC0415 - after logging is configured
    from samd.operator.leader import ElectionConfig, LeaderElector  # noqa: PLC0415

    election = ElectionConfig.from_env()
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # One line per Lease request while standing by is noise; kept for DEBUG (as the handlers do).
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with connect(connections=2) as kube:
        elector = LeaderElector(kube.client, election)
        async with standby_liveness(args.liveness):
            leading = await elector.acquire(stopping)
        if not leading:
            return 0
        # These two exist before kopf starts: kopf treats every task created after its start as its
        # own, and cancels it on exit after a 5 s grace.
        keeper = asyncio.create_task(elector.keep())
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.sleep(0)
        operator_stop = asyncio.Event()
        operator = asyncio.create_task(run_kopf(args, operator_stop))
        await asyncio.wait({operator, keeper, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if keeper.done() and not keeper.cancelled():
            # Another replica may take over once the Lease expires: stop now, without waiting for
            # handlers to finish, so that two replicas never reconcile at once. An interrupted
            # reconcile is repeated by the new leader (kopf keeps its progress in annotations, and
            # every write is an idempotent server-side apply).
            log.error("leader election: leadership lost; exiting so that a fresh standby replaces this one")
            logging.shutdown()
            os._exit(LOST_LEADERSHIP)
        operator_stop.set()  # a signal: kopf shuts down its handlers cleanly
        await operator
        keeper.cancel()
        stop_wait.cancel()
        await elector.release()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m samd.operator``; each flag's default comes from its variable."""
    parser = argparse.ArgumentParser(
        prog="samd-operator",
        description="Reconcile SecureModels: verify signatures, keep keys, RBAC, NetworkPolicies, "
        "certificates and a hardened serving Deployment in place. Run two or more replicas: they elect "
        "one leader through a Lease, and a standby takes over when the leader goes away.",
        epilog="Configuration comes from SAMD_* environment variables (see docs/configuration.md). "
        "The Kubernetes connection comes from the in-cluster service account or KUBECONFIG.",
    )
    parser.add_argument("--namespace", action="append", help="watch only these namespaces (default: all)")
    parser.add_argument(
        "--liveness",
        default=os.environ.get("SAMD_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="URL of the liveness endpoint; empty: none [SAMD_LIVENESS]",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SAMD_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING... [SAMD_LOG_LEVEL]",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "text"],
        default="auto",
        help="JSON lines (production) or text; auto: JSON unless stderr is a terminal",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format, component="operator")

    from samd.operator import handlers, policies  # noqa: F401, PLC0415 - importing registers the handlers with kopf
    from samd.operator.config import OperatorConfig  # noqa: PLC0415
    from samd.operator.leader import ElectionConfig  # noqa: PLC0415

    try:
        # Read once here so that a bad value stops the process with its message, before any Lease
        # is taken or any model is touched (kopf would retry a failing start-up handler instead).
        config = OperatorConfig.from_env()
        election = ElectionConfig.from_env()
    except ValueError as error:
        log.critical("the operator cannot start: %s", error, extra={"event": "bad_configuration"})
        return 2
    if not config.namespace_selector.everything:
        log.info(
            "this instance reconciles the SecureModels of namespaces matching %s",
            config.namespace_selector.text(),
            extra={"namespace_selector": config.namespace_selector.text(), "lease": election.lease_name},
        )
    if not election.enabled:
        asyncio.run(run_kopf(args))
        return 0
    return asyncio.run(run_elected(args))


if __name__ == "__main__":
    raise SystemExit(main())
