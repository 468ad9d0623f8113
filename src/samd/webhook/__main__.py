"""Run the SAMD admission webhook: ``python -m samd.webhook --cert tls.crt --key tls.key`` (the container's entry point).

The process watches SecureModels, ModelTrustPolicies, Namespaces and the operator's signature
ConfigMaps (``samd.webhook.state``), decides with ``samd.webhook.decide.PolicyDecider`` through a
verification cache, and serves HTTPS until SIGTERM (then finishes in-flight requests and exits 0).
``--write-dev-certificates DIR`` writes a throw-away CA and a certificate for 127.0.0.1 and exits,
for running the webhook outside a cluster (the local control plane, the demo).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import prometheus_client
import uvloop

from samd import events
from samd.errors import SamdError
from samd.logs import configure_logging
from samd.storage.guard import AddressPolicy
from samd.webhook.config import WebhookConfig, build_parser, config_from_arguments

logger = logging.getLogger("samd.webhook")


def _parser() -> argparse.ArgumentParser:
    parser = build_parser()
    parser.add_argument(
        "--loader-image",
        action="append",
        metavar="IMAGE",
        help="an image the samd-fetch init container may run from (repeat for several; default: "
        "SAMD_WEBHOOK_LOADER_IMAGES, else the operator's SAMD_IMAGE or samd:0.1.0)",
    )
    parser.add_argument(
        "--write-dev-certificates",
        metavar="DIR",
        type=Path,
        help="write ca.crt, tls.crt and tls.key for 127.0.0.1 and localhost into DIR, then exit",
    )
    return parser


async def run(config: WebhookConfig, loader_images: Sequence[str] | None) -> None:
    """Watch the cluster and serve until SIGTERM."""
    from lightkube import AsyncClient  # noqa: PLC0415 - only the real process talks to a cluster
    from lightkube.core.exceptions import ConfigError  # noqa: PLC0415

    from samd.signing import VerificationResult  # noqa: PLC0415
    from samd.webhook.access import AccessReviewer, lightkube_ask  # noqa: PLC0415
    from samd.webhook.cache import VerificationCache  # noqa: PLC0415
    from samd.webhook.decide import DecisionConfig, PolicyDecider  # noqa: PLC0415
    from samd.webhook.events import EventRecorder, lightkube_create  # noqa: PLC0415
    from samd.webhook.metrics import WebhookMetrics  # noqa: PLC0415
    from samd.webhook.server import AdmissionServer, serve_until_signalled  # noqa: PLC0415
    from samd.webhook.state import WatchedState  # noqa: PLC0415

    decision_config = DecisionConfig(tuple(loader_images)) if loader_images else DecisionConfig.from_env()
    try:
        client = AsyncClient()
    except ConfigError as error:
        raise SamdError(
            f"no Kubernetes connection: {error}",
            hint="run in a pod with a service account, or set KUBECONFIG",
        ) from None
    cache: VerificationCache[VerificationResult] = VerificationCache(
        max_entries=config.cache_max_entries, ttl=config.cache_ttl
    )
    state = WatchedState()
    decider = PolicyDecider(state, cache, decision_config, access=AccessReviewer(lightkube_ask(client)))
    server = AdmissionServer(config, decider, WebhookMetrics(cache_stats=lambda: cache.stats))
    recorder = EventRecorder(state, lightkube_create(client))
    events.add_listener(recorder)
    state.start(client)
    recorder.start()
    try:
        await serve_until_signalled(server)
    finally:
        events.remove_listener(recorder)
        await recorder.stop()
        await state.stop()
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.write_dev_certificates is not None:
        from samd.webhook.server import write_development_certificates  # noqa: PLC0415

        written = write_development_certificates(arguments.write_dev_certificates)
        sys.stdout.write(f"{written.ca_file}\n{written.cert_file}\n{written.key_file}\n")
        return 0
    try:
        config = config_from_arguments(arguments)
    except SamdError as error:
        parser.error(str(error))
    configure_logging(config.log_level, config.log_format, component="webhook")
    # One line per API request of the watches is noise next to the audit log.
    logging.getLogger("httpx2").setLevel(max(logging.WARNING, logging.getLogger().level))
    # The `_created` series double /metrics for nothing a dashboard uses.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        # Security events (refused bypass attempts) go to the sinks SAMD_EVENT_SINKS names, from a
        # background thread; the sinks' addresses pass the same guard as the operator's endpoints.
        events.install(events.dispatcher_from_env(os.environ, AddressPolicy()))
    except events.EventConfigError as error:
        logger.error("the webhook cannot run: %s", error)
        return 2
    try:
        # uvloop: the same server needs about a sixth less CPU per admission than on asyncio's loop.
        uvloop.run(run(config, arguments.loader_image))
    except SamdError as error:
        logger.error("the webhook cannot run: %s", error)
        return 2
    finally:
        events.uninstall()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
