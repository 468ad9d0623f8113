"""The typed input of every builder: one SecureModel and the operator's settings.

The kopf handler parses the object once and hands a ``ModelContext`` to the builders; the builders
never read the clock, the environment or the API server, so the same context always yields the same
manifests (apart from the random keys and serials of certificates).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field

# One type for the egress peers: the operator's configuration holds them, the builders read them.
from samd.operator.config import OPERATOR_POD_LABELS, EgressPeer, MetricsScraper, OperatorConfig
from samd.spec import SecureModelSpec

__all__ = ["BuilderSettings", "EgressPeer", "ModelContext"]


def _kube_dns_labels() -> Mapping[str, str]:
    return {"k8s-app": "kube-dns"}


@dataclass(frozen=True)
class BuilderSettings:
    """Operator-wide settings the builders need, built once at operator start-up (docs/architecture.md, style rule 7)."""

    default_image: str
    """The serving image when a SecureModel names none (the SAMD inference server)."""
    fetch_image: str
    """The image of the `samd-fetch` init container (the verifying loader)."""
    operator_namespace: str
    cluster_domain: str = "cluster.local"
    storage_egress: tuple[EgressPeer, ...] = ()
    """Where model pods may connect besides DNS: object storage and key-service endpoints."""
    dns_namespace: str = "kube-system"
    dns_pod_labels: Mapping[str, str] = field(default_factory=_kube_dns_labels)
    dns_port: int = 53
    model_volume_size: str = "1Gi"
    """Size limit of the memory-backed volume the decrypted model lives in."""
    scratch_volume_size: str = "64Mi"
    """Size limit of the memory-backed /tmp (the root filesystem is read-only)."""
    keyset_data_key: str = "keyset.json"
    """The entry of a local-provider key Secret's `data` that holds the keyset."""
    certificate_validity: datetime.timedelta = datetime.timedelta(days=90)
    certificate_renew_before: datetime.timedelta = datetime.timedelta(days=30)
    metrics_scrapers: tuple[MetricsScraper, ...] = ()
    """Who may scrape the model server's metrics port (the Prometheus pods); none: nobody."""

    @classmethod
    def of(cls, config: OperatorConfig) -> BuilderSettings:
        """What the builders need of the operator's configuration (the webhook builds the same pods)."""
        return cls(
            default_image=config.default_image,
            fetch_image=config.default_image,
            operator_namespace=config.namespace,
            cluster_domain=config.cluster_domain,
            storage_egress=config.storage_egress,
            model_volume_size=config.model_volume_size,
            certificate_validity=config.certificate_validity,
            certificate_renew_before=config.renew_before,
            # The operator reads the servers' metrics too (incident thresholds): always let it in.
            metrics_scrapers=(
                *config.metrics_scrapers,
                MetricsScraper(config.namespace, OPERATOR_POD_LABELS),
            ),
        )


@dataclass(frozen=True)
class ModelContext:
    """One SecureModel as the builders see it."""

    name: str
    namespace: str
    uid: str
    spec: SecureModelSpec
    manifest_digest: str | None
    """The verified signed-manifest digest ("sha256:<hex>"), or None while the signature is unverified."""
    settings: BuilderSettings
