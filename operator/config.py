"""The operator's configuration: one typed object built at start-up from the environment (DESIGN §5.7)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from samd.spec import parse_duration


@dataclass(frozen=True)
class EgressPeer:
    """Where model pods may connect to fetch their artifact (NetworkPolicy egress)."""

    cidr: str
    port: int


@dataclass(frozen=True)
class OperatorConfig:
    namespace: str = "samd-system"  # where the operator keeps its CA Secret
    default_image: str = "samd:0.1.0"  # set SAMD_IMAGE to your registry's copy of the SAMD image
    ca_secret_name: str = "samd-operator-ca"  # noqa: S105 - a Secret name, not a secret
    cluster_domain: str = "cluster.local"
    certificate_validity: datetime.timedelta = datetime.timedelta(days=90)
    renew_before: datetime.timedelta = datetime.timedelta(days=30)
    model_volume_size: str = "2Gi"
    storage_egress: tuple[EgressPeer, ...] = (EgressPeer("0.0.0.0/0", 443),)
    reverify_interval: datetime.timedelta = datetime.timedelta(hours=1)
    resync_interval: datetime.timedelta = datetime.timedelta(seconds=5)
    max_signature_bytes: int = 16 * 1024 * 1024
    workers: int = field(default=8)  # SecureModels reconciled at once (SAMD_WORKERS)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read SAMD_* variables; anything unset keeps its default."""
        env = os.environ if env is None else env
        defaults = cls()

        def duration(name: str, default: datetime.timedelta) -> datetime.timedelta:
            value = env.get(name)
            return parse_duration(value) if value else default

        egress = env.get("SAMD_STORAGE_EGRESS")  # "10.0.0.0/8:443,192.168.1.5/32:9000"
        peers = defaults.storage_egress
        if egress:
            parsed = []
            for item in egress.split(","):
                cidr, _, port = item.strip().rpartition(":")
                parsed.append(EgressPeer(cidr, int(port)))
            peers = tuple(parsed)
        return cls(
            namespace=env.get("SAMD_NAMESPACE", defaults.namespace),
            default_image=env.get("SAMD_IMAGE", defaults.default_image),
            ca_secret_name=env.get("SAMD_CA_SECRET", defaults.ca_secret_name),
            cluster_domain=env.get("SAMD_CLUSTER_DOMAIN", defaults.cluster_domain),
            certificate_validity=duration("SAMD_CERT_VALIDITY", defaults.certificate_validity),
            renew_before=duration("SAMD_CERT_RENEW_BEFORE", defaults.renew_before),
            model_volume_size=env.get("SAMD_MODEL_VOLUME_SIZE", defaults.model_volume_size),
            storage_egress=peers,
            reverify_interval=duration("SAMD_REVERIFY_INTERVAL", defaults.reverify_interval),
            resync_interval=duration("SAMD_RESYNC_INTERVAL", defaults.resync_interval),
            workers=int(env.get("SAMD_WORKERS", defaults.workers)),
        )
