"""The webhook server's configuration: one typed object built at start-up (docs/architecture.md, style rule 7).

Every setting has a command-line flag (``python -m samd.webhook --help``) and a SAMD_WEBHOOK_*
environment variable; a flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from samd.errors import UsageError

MIB = 1 << 20


@dataclass(frozen=True)
class WebhookConfig:
    cert_file: Path
    key_file: Path
    host: str = "0.0.0.0"  # noqa: S104 - the webhook Service reaches the pod on its pod IP
    port: int = 8443
    # TLS 1.3 only unless the cluster's API server cannot speak it (then allow 1.2).
    tls_min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    # kube-apiserver sends object and oldObject, each up to etcd's 1.5 MiB limit.
    max_body_bytes: int = 3 * MIB
    # How often the certificate and key files are checked for a change.
    cert_reload_interval: float = 5.0
    # Below the configuration's timeoutSeconds (5 s), so the API server gets our clear message.
    decision_timeout: float = 4.0
    # How long a client may take for its TLS handshake, its first request's headers and each request
    # body: the API server sends a whole AdmissionReview at once, so only a stalled or hostile client
    # is cut off, well inside the configuration's timeoutSeconds.
    read_timeout: float = 3.0
    # Connections open at once; one more is closed as soon as it is accepted. The API server keeps a
    # few keep-alive connections per webhook replica.
    max_connections: int = 1024
    # How long in-flight requests may take to finish after SIGTERM.
    shutdown_timeout: float = 10.0
    cache_max_entries: int = 4096
    cache_ttl: float = 300.0
    log_level: str = "INFO"
    log_format: str = "auto"

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:  # 0: any free port (tests, benchmarks)
            raise UsageError(f"port {self.port} is not a TCP port (0-65535)")
        if self.tls_min_version not in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            raise UsageError("the minimum TLS version must be 1.2 or 1.3")
        if self.max_body_bytes < 1024:
            raise UsageError("the body size limit must be at least 1024 bytes")
        for name in (
            "cert_reload_interval",
            "decision_timeout",
            "read_timeout",
            "shutdown_timeout",
            "cache_ttl",
        ):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive")
        if self.max_connections < 1:
            raise UsageError("max_connections must be at least 1")
        if self.cache_max_entries < 1:
            raise UsageError("the cache needs room for at least one entry")
        if self.log_format not in ("auto", "json", "text"):
            raise UsageError(f"log format {self.log_format!r}: write auto, json or text")


def parse_tls_version(text: str) -> ssl.TLSVersion:
    versions = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
    try:
        return versions[text.strip()]
    except KeyError:
        raise UsageError(f"TLS minimum version {text!r}: write 1.2 or 1.3") from None


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line of ``python -m samd.webhook``; defaults come from SAMD_WEBHOOK_* variables."""
    env = os.environ if env is None else env
    defaults = WebhookConfig(cert_file=Path("tls.crt"), key_file=Path("tls.key"))

    def default(name: str, value: object) -> str | None:
        found = env.get(f"SAMD_WEBHOOK_{name}")
        return found if found is not None else (None if value is None else str(value))

    parser = argparse.ArgumentParser(
        prog="python -m samd.webhook",
        description="The SAMD validating admission webhook: admits a workload only if the model it "
        "runs has a signature that verifies under the namespace's ModelTrustPolicy.",
        epilog="Every flag can also be set with the environment variable in brackets. The Kubernetes "
        "connection comes from the in-cluster service account or KUBECONFIG.",
    )
    add = parser.add_argument
    add("--cert", default=default("CERT", None), help="TLS certificate chain, PEM [SAMD_WEBHOOK_CERT]")
    add("--key", default=default("KEY", None), help="TLS private key, PEM [SAMD_WEBHOOK_KEY]")
    add("--host", default=default("HOST", defaults.host), help="address to listen on [SAMD_WEBHOOK_HOST]")
    add("--port", default=default("PORT", defaults.port), help="HTTPS port [SAMD_WEBHOOK_PORT]")
    add(
        "--tls-min-version",
        choices=["1.2", "1.3"],
        default=default("TLS_MIN_VERSION", "1.3"),
        help="lowest TLS version accepted (default 1.3) [SAMD_WEBHOOK_TLS_MIN_VERSION]",
    )
    add(
        "--max-body-bytes",
        default=default("MAX_BODY_BYTES", defaults.max_body_bytes),
        help="largest AdmissionReview accepted, in bytes (default 3 MiB) [SAMD_WEBHOOK_MAX_BODY_BYTES]",
    )
    add(
        "--cert-reload-interval",
        default=default("CERT_RELOAD_INTERVAL", defaults.cert_reload_interval),
        help="seconds between checks of the TLS files for a change [SAMD_WEBHOOK_CERT_RELOAD_INTERVAL]",
    )
    add(
        "--decision-timeout",
        default=default("DECISION_TIMEOUT", defaults.decision_timeout),
        help="seconds before an undecided request is denied; keep it below the configuration's "
        "timeoutSeconds [SAMD_WEBHOOK_DECISION_TIMEOUT]",
    )
    add(
        "--read-timeout",
        default=default("READ_TIMEOUT", defaults.read_timeout),
        help="seconds a client may take for the TLS handshake, the first request's headers and each "
        "request body before its connection is closed [SAMD_WEBHOOK_READ_TIMEOUT]",
    )
    add(
        "--max-connections",
        default=default("MAX_CONNECTIONS", defaults.max_connections),
        help="connections open at once; more are closed when accepted [SAMD_WEBHOOK_MAX_CONNECTIONS]",
    )
    add(
        "--shutdown-timeout",
        default=default("SHUTDOWN_TIMEOUT", defaults.shutdown_timeout),
        help="seconds in-flight requests may take after SIGTERM [SAMD_WEBHOOK_SHUTDOWN_TIMEOUT]",
    )
    add(
        "--cache-size",
        default=default("CACHE_SIZE", defaults.cache_max_entries),
        help="verification cache entries [SAMD_WEBHOOK_CACHE_SIZE]",
    )
    add(
        "--cache-ttl",
        default=default("CACHE_TTL", defaults.cache_ttl),
        help="seconds a verification stays cached [SAMD_WEBHOOK_CACHE_TTL]",
    )
    add("--log-level", default=default("LOG_LEVEL", defaults.log_level), help="[SAMD_WEBHOOK_LOG_LEVEL]")
    add(
        "--log-format",
        choices=["auto", "json", "text"],
        default=default("LOG_FORMAT", defaults.log_format),
        help="JSON lines (production) or text; auto: JSON unless stderr is a terminal [SAMD_WEBHOOK_LOG_FORMAT]",
    )
    return parser


def config_from_arguments(arguments: argparse.Namespace) -> WebhookConfig:
    """The typed configuration; a bad value is a UsageError naming the flag."""
    if not arguments.cert or not arguments.key:
        raise UsageError(
            "the TLS certificate and key are required",
            hint="pass --cert and --key (or set SAMD_WEBHOOK_CERT and SAMD_WEBHOOK_KEY)",
        )

    def number(flag: str, convert: type[int] | type[float]) -> float:
        text = getattr(arguments, flag.replace("-", "_"))
        try:
            return convert(text)
        except (TypeError, ValueError):
            raise UsageError(f"--{flag} {text!r} is not a number") from None

    return WebhookConfig(
        cert_file=Path(arguments.cert),
        key_file=Path(arguments.key),
        host=arguments.host,
        port=int(number("port", int)),
        tls_min_version=parse_tls_version(arguments.tls_min_version),
        max_body_bytes=int(number("max-body-bytes", int)),
        cert_reload_interval=number("cert-reload-interval", float),
        decision_timeout=number("decision-timeout", float),
        read_timeout=number("read-timeout", float),
        max_connections=int(number("max-connections", int)),
        shutdown_timeout=number("shutdown-timeout", float),
        cache_max_entries=int(number("cache-size", int)),
        cache_ttl=number("cache-ttl", float),
        log_level=arguments.log_level,
        log_format=arguments.log_format,
    )
