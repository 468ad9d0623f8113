"""cert-manager `Certificate` objects for a model, when a cert-manager issuer signs its certificates.

The same certificates the operator's own CA issues (builders/certificates.py): the server
certificate for the Service's names and one client certificate per allowed client, CN the client
and O the model, each into the Secret the pods and clients already mount. Only the signer changes.
Pure: the issuer, the model and the settings are inputs.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from samd.operator.builders.certificates import server_dns_names
from samd.operator.builders.context import ModelContext
from samd.operator.builders.metadata import Manifest, owned_labels, owned_metadata
from samd.operator.builders.names import client_secret_name, tls_secret_name
from samd.operator.builders.serving import client_organization
from samd.operator.timestamps import parse_time
from samd.policy import TrustPolicy
from samd.spec import CertificateIssuerRef

CERTIFICATE_API_VERSION = "cert-manager.io/v1"
CERTIFICATE_KIND = "Certificate"
CERTIFICATE_NAME_ANNOTATION = "cert-manager.io/certificate-name"
"""cert-manager writes it on every Secret it issues into: the Certificate the Secret is for."""


@dataclass(frozen=True)
class IssuerConflict:
    """Two policies covering the model's namespace name different issuers: none is used."""

    message: str


@dataclass(frozen=True)
class ChosenIssuer:
    """The issuer for a model's certificates, and who chose it (for the status and messages)."""

    ref: CertificateIssuerRef
    chosen_by: str  # "the chart (SAMD_CERT_ISSUER)" or "ModelTrustPolicy <name>"


def choose_issuer(
    default: CertificateIssuerRef | None, covering: Sequence[TrustPolicy]
) -> ChosenIssuer | IssuerConflict | None:
    """The issuer of a model's certificates: a covering policy's, else the chart's; None: the operator CA.

    Policies that name the same issuer agree; two that name different ones are a conflict, and no
    issuer is chosen rather than one of them (fail closed: the cluster admin must decide).
    """
    naming = sorted((p for p in covering if p.spec.certificate_issuer is not None), key=lambda p: p.name)
    issuers: dict[CertificateIssuerRef, list[str]] = {}
    for policy in naming:
        assert policy.spec.certificate_issuer is not None  # noqa: S101 - filtered above, for mypy
        issuers.setdefault(policy.spec.certificate_issuer, []).append(policy.name)
    if len(issuers) > 1:
        named = "; ".join(
            f"{', '.join(f'ModelTrustPolicy {n}' for n in names)} name{'s' if len(names) == 1 else ''} {ref}"
            for ref, names in issuers.items()
        )
        return IssuerConflict(
            f"the policies covering this namespace name different certificate issuers ({named}): "
            "no certificate is issued or renewed until they agree; set the same spec.certificateIssuer "
            "in each, or remove it from all but one"
        )
    if issuers:
        ((ref, names),) = issuers.items()
        return ChosenIssuer(ref, f"ModelTrustPolicy {names[0]}")
    if default is not None:
        return ChosenIssuer(default, "the chart (SAMD_CERT_ISSUER)")
    return None


def go_duration(duration: datetime.timedelta) -> str:
    """A duration as cert-manager reads it (Go's time.ParseDuration): whole hours, minutes, seconds."""
    seconds = int(duration.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes}m{seconds}s"


def _certificate(
    ctx: ModelContext,
    issuer: CertificateIssuerRef,
    secret_name: str,
    *,
    common_name: str,
    usage: str,
    dns_names: Sequence[str] = (),
    organizations: Sequence[str] = (),
) -> Manifest:
    spec: dict[str, Any] = {
        "secretName": secret_name,
        # cert-manager creates the Secret; these labels let the operator's owned-object watch see it.
        "secretTemplate": {"labels": owned_labels(ctx)},
        "commonName": common_name,
        # As the operator CA issues them: an EC P-256 key (a new one on each renewal), ECDSA
        # signatures only (no key encipherment), one extended key usage.
        "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"},
        "usages": ["digital signature", usage],
        "duration": go_duration(ctx.settings.certificate_validity),
        "renewBefore": go_duration(ctx.settings.certificate_renew_before),
        "issuerRef": {"kind": issuer.kind, "name": issuer.name, "group": issuer.group},
    }
    if dns_names:
        spec["dnsNames"] = list(dns_names)
    if organizations:
        spec["subject"] = {"organizations": list(organizations)}
    return {
        "apiVersion": CERTIFICATE_API_VERSION,
        "kind": CERTIFICATE_KIND,
        # Named like its Secret: one Certificate per Secret, found again from the Secret's name.
        "metadata": owned_metadata(ctx, secret_name),
        "spec": spec,
    }


def server_certificate(ctx: ModelContext, issuer: CertificateIssuerRef) -> Manifest:
    """The Certificate of the `<model>-tls` Secret: serverAuth for the model Service's names."""
    dns_names = server_dns_names(ctx)
    return _certificate(
        ctx,
        issuer,
        tls_secret_name(ctx.name),
        common_name=dns_names[0],
        usage="server auth",
        dns_names=dns_names,
    )


def client_certificate(ctx: ModelContext, issuer: CertificateIssuerRef, client: str) -> Manifest:
    """The Certificate of the `<model>-client-<client>` Secret: clientAuth, CN the client, O the model.

    The model server admits a client by this O and CN (`samd serve --client-organization`).
    """
    return _certificate(
        ctx,
        issuer,
        client_secret_name(ctx.name, client),
        common_name=client,
        usage="client auth",
        organizations=[client_organization(ctx)],
    )


def certificate_manifests(ctx: ModelContext, issuer: CertificateIssuerRef) -> list[Manifest]:
    """The server's Certificate first, then one per client in the spec's order."""
    clients = [client.name for client in ctx.spec.serving.clients]
    return [server_certificate(ctx, issuer), *(client_certificate(ctx, issuer, c) for c in clients)]


@dataclass(frozen=True)
class CertificateState:
    """What cert-manager reports of one Certificate."""

    ready: bool
    reason: str
    message: str
    not_after: datetime.datetime | None

    @classmethod
    def of(cls, certificate: Mapping[str, Any] | None) -> CertificateState:
        """Ready only when cert-manager's Ready condition is True for the Certificate's current spec."""
        if certificate is None:
            return cls(False, "Pending", "cert-manager has not seen the Certificate yet", None)
        status = certificate.get("status") or {}
        generation = (certificate.get("metadata") or {}).get("generation")
        not_after = parse_time(status.get("notAfter"))
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready is None:
            return cls(False, "Pending", "cert-manager has not reported on the Certificate yet", not_after)
        observed = ready.get("observedGeneration")
        if generation is not None and observed is not None and observed < generation:
            return cls(
                False, "Pending", "cert-manager has not acted on the Certificate's latest spec yet", not_after
            )
        return cls(
            ready.get("status") == "True",
            str(ready.get("reason") or ""),
            str(ready.get("message") or ""),
            not_after,
        )
