"""The operator's configuration: one typed object built at start-up from the environment (DESIGN §5.7)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from samd.spec import parse_duration
from samd.storage.guard import AddressPolicy, parse_networks


@dataclass(frozen=True)
class EgressPeer:
    """Where model pods may connect to fetch their artifact (NetworkPolicy egress)."""

    cidr: str
    port: int


@dataclass(frozen=True)
class MetricsScraper:
    """Pods that may scrape a model server's metrics port: a namespace (by name) and a pod selector."""

    namespace: str
    pod_labels: tuple[tuple[str, str], ...]


DEFAULT_SCRAPER = MetricsScraper("monitoring", (("app.kubernetes.io/name", "prometheus"),))


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
    # No confused deputy (docs/operator.md): what a SecureModel may point the operator at.
    allow_local_files: bool = False  # SAMD_ALLOW_LOCAL_FILES: development only, never in the chart
    local_file_roots: tuple[str, ...] = ()  # SAMD_LOCAL_FILE_ROOTS: with it, only under these
    cluster_networks: tuple[str, ...] = ()  # SAMD_CLUSTER_CIDRS: the service and pod networks
    metrics_port: int | None = 9090  # SAMD_METRICS_PORT: Prometheus /metrics; "off" for none, 0 any free port
    # SAMD_METRICS_SCRAPER_NAMESPACE / _POD_LABELS: who may reach the model pods' metrics port.
    metrics_scrapers: tuple[MetricsScraper, ...] = (DEFAULT_SCRAPER,)

    def address_policy(self) -> AddressPolicy:
        """The operator's own part of the address rules; covering policies add their allowances."""
        return AddressPolicy(
            allow_local_files=self.allow_local_files,
            local_file_roots=tuple(Path(root) for root in self.local_file_roots),
            internal_networks=parse_networks(",".join(self.cluster_networks)),
        )

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
            allow_local_files=_flag(env, "SAMD_ALLOW_LOCAL_FILES"),
            local_file_roots=tuple(r for r in env.get("SAMD_LOCAL_FILE_ROOTS", "").split(os.pathsep) if r),
            cluster_networks=tuple(str(n) for n in parse_networks(env.get("SAMD_CLUSTER_CIDRS", ""))),
            metrics_port=_port(env, "SAMD_METRICS_PORT", defaults.metrics_port),
            metrics_scrapers=_scrapers(env, defaults.metrics_scrapers),
        )


def _scrapers(env: Mapping[str, str], default: tuple[MetricsScraper, ...]) -> tuple[MetricsScraper, ...]:
    """SAMD_METRICS_SCRAPER_NAMESPACE (empty: nobody may scrape) and SAMD_METRICS_SCRAPER_POD_LABELS
    ("k=v,k2=v2"; empty: every pod of that namespace)."""
    if "SAMD_METRICS_SCRAPER_NAMESPACE" not in env and "SAMD_METRICS_SCRAPER_POD_LABELS" not in env:
        return default
    namespace = env.get("SAMD_METRICS_SCRAPER_NAMESPACE", default[0].namespace if default else "").strip()
    if not namespace:
        return ()
    text = env.get("SAMD_METRICS_SCRAPER_POD_LABELS")
    if text is None:
        return (MetricsScraper(namespace, default[0].pod_labels if default else ()),)
    labels = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"SAMD_METRICS_SCRAPER_POD_LABELS: {item!r} is not key=value")
        labels.append((key.strip(), value.strip()))
    return (MetricsScraper(namespace, tuple(labels)),)


def _port(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value == "off":
        return None
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"{name}={value!r}: write a port number (0 for any free port) or off")
    return int(value)


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "false", "0", "no"):
        return False
    if value in ("true", "1", "yes"):
        return True
    raise ValueError(f"{name}={value!r}: write true or false")
