"""The operator's configuration: one typed object built at start-up from the environment (docs/architecture.md, style rule 7)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from samd.operator.shard import NamespaceSelector, parse_selector
from samd.spec import CertificateIssuerRef, parse_duration
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
# The chart's operator pods carry this label: the operator reads the model servers' metrics itself
# to compare them with the policies' incident thresholds (src/samd/operator/incidents.py).
OPERATOR_POD_LABELS = (("app.kubernetes.io/name", "samd-operator"),)


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
    # How often the servers' metrics are read for the policies' incident thresholds (docs/events.md).
    incident_check_interval: datetime.timedelta = datetime.timedelta(seconds=30)
    max_signature_bytes: int = 16 * 1024 * 1024
    workers: int = field(default=8)  # SecureModels reconciled at once (SAMD_WORKERS)
    # No confused deputy (docs/operator.md): what a SecureModel may point the operator at.
    allow_local_files: bool = False  # SAMD_ALLOW_LOCAL_FILES: development only, never in the chart
    local_file_roots: tuple[str, ...] = ()  # SAMD_LOCAL_FILE_ROOTS: with it, only under these
    cluster_networks: tuple[str, ...] = ()  # SAMD_CLUSTER_CIDRS: the service and pod networks
    metrics_port: int | None = 9090  # SAMD_METRICS_PORT: Prometheus /metrics; "off" for none, 0 any free port
    # SAMD_METRICS_SCRAPER_NAMESPACE / _POD_LABELS: who may reach the model pods' metrics port.
    metrics_scrapers: tuple[MetricsScraper, ...] = (DEFAULT_SCRAPER,)
    # SAMD_CERT_ISSUER: a cert-manager issuer for the model certificates; None: the operator's own CA.
    certificate_issuer: CertificateIssuerRef | None = None
    # SAMD_NAMESPACE_SELECTOR: the namespaces this instance reconciles (sharding, docs/scaling.md).
    namespace_selector: NamespaceSelector = field(default_factory=NamespaceSelector)

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
            incident_check_interval=duration(
                "SAMD_INCIDENT_CHECK_INTERVAL", defaults.incident_check_interval
            ),
            workers=int(env.get("SAMD_WORKERS", defaults.workers)),
            allow_local_files=_flag(env, "SAMD_ALLOW_LOCAL_FILES"),
            local_file_roots=tuple(r for r in env.get("SAMD_LOCAL_FILE_ROOTS", "").split(os.pathsep) if r),
            cluster_networks=tuple(str(n) for n in parse_networks(env.get("SAMD_CLUSTER_CIDRS", ""))),
            metrics_port=_port(env, "SAMD_METRICS_PORT", defaults.metrics_port),
            metrics_scrapers=_scrapers(env, defaults.metrics_scrapers),
            certificate_issuer=parse_issuer(env.get("SAMD_CERT_ISSUER", "")),
            namespace_selector=parse_selector(env.get("SAMD_NAMESPACE_SELECTOR", "")),
        )


@dataclass(frozen=True)
class Variable:
    """One environment variable, as docs/configuration.md lists it (hack/generate-config-docs)."""

    name: str
    default: str
    meaning: str


def show_default(value: object) -> str:
    """A default as a person would write it in the variable: `1h`, `true`, `0.0.0.0/0:443`, `empty`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.timedelta):
        seconds = int(value.total_seconds())
        hours, rest = divmod(seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        text = (
            (f"{hours}h" if hours else "")
            + (f"{minutes}m" if minutes else "")
            + (f"{seconds}s" if seconds else "")
        )
        return text or "0s"
    if isinstance(value, tuple):
        items = [f"{peer.cidr}:{peer.port}" if isinstance(peer, EgressPeer) else str(peer) for peer in value]
        return ",".join(items) if items else "empty"
    return str(value) if value != "" else "empty"


def variables() -> tuple[Variable, ...]:
    """Every variable `OperatorConfig.from_env` reads, with its default taken from the defaults above."""
    d = OperatorConfig()
    return (
        Variable(
            "SAMD_NAMESPACE",
            d.namespace,
            "where the operator keeps its CA Secret and its leader-election Lease",
        ),
        Variable(
            "SAMD_IMAGE",
            d.default_image,
            "image of the `samd fetch` init container and of the `samd serve` / `samd proxy` container",
        ),
        Variable("SAMD_CA_SECRET", d.ca_secret_name, "the operator CA Secret's name"),
        Variable("SAMD_CLUSTER_DOMAIN", d.cluster_domain, "for the server certificate's names"),
        Variable(
            "SAMD_CERT_VALIDITY",
            show_default(d.certificate_validity),
            "lifetime of the certificates the operator issues",
        ),
        Variable(
            "SAMD_CERT_RENEW_BEFORE",
            show_default(d.renew_before),
            "how long before expiry a certificate is renewed",
        ),
        Variable(
            "SAMD_CERT_ISSUER",
            "empty",
            "`KIND[.GROUP]/NAME` (`ClusterIssuer/samd-ca`, `Issuer/samd-ca`): cert-manager issues the model "
            "certificates instead of the operator CA; a namespaced `Issuer` is looked up in each model's "
            "namespace, a ModelTrustPolicy's `certificateIssuer` overrides it (docs/operator.md); empty: the "
            "operator CA",
        ),
        Variable(
            "SAMD_MODEL_VOLUME_SIZE",
            d.model_volume_size,
            "size limit of the memory-backed model volume (counts against the pod's memory)",
        ),
        Variable(
            "SAMD_STORAGE_EGRESS",
            show_default(d.storage_egress),
            "comma-separated `CIDR:port` list the model pods may reach besides DNS",
        ),
        Variable(
            "SAMD_REVERIFY_INTERVAL",
            show_default(d.reverify_interval),
            "how often a verified signature is verified again",
        ),
        Variable(
            "SAMD_RESYNC_INTERVAL",
            show_default(d.resync_interval),
            "how often due time-bound work (expiring grants, certificate renewal, key rotation) is looked for, in memory",
        ),
        Variable(
            "SAMD_INCIDENT_CHECK_INTERVAL",
            show_default(d.incident_check_interval),
            "how often the model pods are listed (one LIST per namespace holding SecureModels): their "
            "loaders' failures are counted (docs/monitoring.md) and the served models' metrics compared with "
            "the trust policies' incident thresholds (docs/events.md)",
        ),
        Variable(
            "SAMD_EVENT_SINKS",
            "",
            "JSON list of security-event sinks `{name, url, types?, allowInternal?, allowHttp?}`; the HMAC key "
            "of entry i is in `SAMD_EVENT_SINK_<i>_KEY` (docs/events.md); also read by the webhook",
        ),
        Variable(
            "SAMD_METRICS_PORT",
            show_default(d.metrics_port),
            "the operator's Prometheus endpoint, `GET /metrics` over plain HTTP; `off` for none, `0` for any "
            "free port (docs/monitoring.md)",
        ),
        Variable(
            "SAMD_METRICS_SCRAPER_NAMESPACE",
            d.metrics_scrapers[0].namespace if d.metrics_scrapers else "",
            "the namespace of the Prometheus that scrapes the model servers: each model's NetworkPolicy lets "
            "its pods in to port 9090; empty: nobody may scrape",
        ),
        Variable(
            "SAMD_METRICS_SCRAPER_POD_LABELS",
            ",".join(f"{k}={v}" for k, v in d.metrics_scrapers[0].pod_labels) if d.metrics_scrapers else "",
            "`key=value,...`: the Prometheus pods in that namespace (empty: every pod of it)",
        ),
        Variable(
            "SAMD_WORKERS",
            str(d.workers),
            "SecureModels reconciled at once; the operator keeps twice as many API connections open",
        ),
        Variable(
            "SAMD_ALLOW_LOCAL_FILES",
            show_default(d.allow_local_files),
            "**development only**: read `file://` URIs and local key paths; a covering policy must also set "
            "`allowLocalFiles: true`. The Helm chart never sets it",
        ),
        Variable(
            "SAMD_LOCAL_FILE_ROOTS",
            show_default(d.local_file_roots),
            "with `SAMD_ALLOW_LOCAL_FILES`: only files under these directories (`:`-separated; symlinks are "
            "resolved first); empty allows any file the operator can read",
        ),
        Variable(
            "SAMD_NAMESPACE_SELECTOR",
            "empty",
            "label selector of the namespaces whose SecureModels this instance reconciles, in `kubectl -l` "
            "syntax (`samd.dev/shard=a`, `samd.dev/shard notin (a,b)`, `!samd.dev/shard`); empty: every "
            "namespace. Instances with disjoint selectors share a cluster, each with its own Lease "
            "(docs/scaling.md)",
        ),
        Variable(
            "SAMD_CLUSTER_CIDRS",
            show_default(d.cluster_networks),
            "comma-separated service and pod networks of the cluster (`10.96.0.0/12,10.244.0.0/16`); refused "
            "like private addresses even when they are public ranges",
        ),
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


def parse_issuer(text: str) -> CertificateIssuerRef | None:
    """SAMD_CERT_ISSUER: `KIND[.GROUP]/NAME`, as `kubectl get KIND.GROUP/NAME` names an object; empty: None."""
    text = text.strip()
    if not text:
        return None
    kind_group, slash, name = text.partition("/")
    kind, _, group = kind_group.partition(".")
    if not slash or not kind or not name:
        raise ValueError(
            f"SAMD_CERT_ISSUER={text!r}: write KIND/NAME, e.g. ClusterIssuer/samd-ca or Issuer/samd-ca "
            "(KIND.GROUP/NAME for an issuer outside cert-manager.io)"
        )
    fields = {"kind": kind, "name": name, **({"group": group} if group else {})}
    try:
        return CertificateIssuerRef.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ValueError(
            f"SAMD_CERT_ISSUER={text!r}: {problems} (KIND is ClusterIssuer or Issuer, NAME an object name)"
        ) from None


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
