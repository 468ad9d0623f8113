"""CertificatesReady: the model's mTLS server and client certificates, issued by the operator's CA
or, when the chart or a covering policy names one, by a cert-manager issuer (steps/certmanager.py).

The CA lives in a Secret in the operator's namespace (created by the first replica that needs it).
A certificate this operator issued is not read back: it is remembered, with the API wrapper's record
of its apply, until someone else changes its Secret; one found in a Secret is renewed when it is
due, or when another CA signed it.

`Certificates.ensure(run, context, owned, covering)` returns `status.certificates`.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from samd.operator.builders.certificates import (
    CertificateAuthority,
    certificate_not_after,
    issue_client_certificate,
    issue_server_certificate,
    needs_renewal,
)
from samd.operator.builders.context import ModelContext
from samd.operator.builders.names import client_secret_name, tls_secret_name
from samd.operator.conditions import ConditionType
from samd.operator.config import OperatorConfig
from samd.operator.kube import Applied, Kube
from samd.operator.steps.certmanager import CertManagerCertificates
from samd.operator.steps.owned import apply_unless_taken
from samd.operator.steps.shared import EventReason, ModelKey, OwnedRef, Run
from samd.operator.timestamps import iso
from samd.policy import TrustPolicy

C = ConditionType


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate this operator issued and stored; its key is not kept."""

    not_after: datetime.datetime
    authority: CertificateAuthority
    applied: Applied  # the API wrapper's record of the apply; gone or replaced once someone changes it


@dataclass
class Certificates:
    """Issues and renews each model's certificates; caches the CA and what it issued per model."""

    kube: Kube
    config: OperatorConfig
    _issued: dict[ModelKey, dict[str, IssuedCertificate]] = field(default_factory=dict)
    _ca: CertificateAuthority | None = None
    _ca_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cert_manager: CertManagerCertificates = field(init=False)

    def __post_init__(self) -> None:
        self.cert_manager = CertManagerCertificates(self.kube, self.config)

    def forget(self, key: ModelKey) -> None:
        self._issued.pop(key, None)

    async def ensure(
        self,
        run: Run,
        context: ModelContext,
        owned: Sequence[OwnedRef],
        covering: Sequence[TrustPolicy] = (),
    ) -> dict[str, Any]:
        """`status.certificates`; sets CertificatesReady. A cert-manager issuer named by the chart or
        a covering policy issues them; otherwise the operator CA, once any Certificates an issuer
        had are gone (the two would overwrite each other's Secrets)."""
        issuer = self.cert_manager.choose(covering)
        if issuer is not None:
            return await self.cert_manager.ensure(run, context, owned, issuer)
        if not await self.cert_manager.release(run, context):
            return dict(run.model.status.get("certificates") or {})  # retried
        return {**await self._issue(run, context, owned), "issuer": None}

    async def _issue(self, run: Run, context: ModelContext, owned: Sequence[OwnedRef]) -> dict[str, Any]:
        """The operator CA's: issues what is missing or due."""
        authority = await self.authority(run.now)
        clients = [client.name for client in context.spec.serving.clients]
        wanted: list[tuple[str, str | None]] = [(tls_secret_name(context.name), None)]
        wanted += [(client_secret_name(context.name, client), client) for client in clients]
        server_not_after = None
        namespace, renew_before = context.namespace, self.config.renew_before
        for secret_name, client in wanted:
            issued = self._issued_certificate(run.key, secret_name, authority)
            if issued is not None:
                existed, renew = True, run.now >= issued.not_after - renew_before
                not_after: datetime.datetime | None = issued.not_after
            else:
                data = await self._stored_certificate(namespace, secret_name, owned)
                existed, renew = (
                    bool(data),
                    needs_renewal(data, authority, run.now, renew_before=renew_before),
                )
                not_after = certificate_not_after(data)
            if renew:
                manifest = (
                    issue_server_certificate(authority, context, run.now)
                    if client is None
                    else issue_client_certificate(authority, context, client, run.now)
                )
                try:
                    await apply_unless_taken(self.kube, run, context, manifest, owned)
                except (kopf.TemporaryError, kopf.PermanentError) as error:
                    run.apply_failed(manifest, error)
                    continue
                not_after = certificate_not_after(manifest["data"])
                applied = self.kube.last_applied("Secret", namespace, secret_name)
                if applied is not None and not_after is not None:
                    self._issued.setdefault(run.key, {})[secret_name] = IssuedCertificate(
                        not_after, authority, applied
                    )
                if existed:
                    run.event(EventReason.CERTIFICATE_RENEWED, f"Secret {secret_name} renewed")
            if client is None:
                server_not_after = not_after
        until = iso(server_not_after) if server_not_after else "unknown"
        run.set(
            C.CERTIFICATES_READY,
            True,
            "Issued",
            f"server certificate valid until {until}; {len(clients)} client certificate(s)",
        )
        return {"serverNotAfter": iso(server_not_after) if server_not_after else None, "clients": clients}

    async def authority(self, now: datetime.datetime) -> CertificateAuthority:
        """The operator's CA, read (or created) once per process."""
        async with self._ca_lock:
            if self._ca is not None:
                return self._ca
            name, namespace = self.config.ca_secret_name, self.config.namespace
            secret = await self.kube.get("v1", "Secret", name, namespace)
            if secret is None:
                await self.kube.create(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": name, "namespace": namespace},
                        "type": "Opaque",
                        "data": CertificateAuthority.generate(now).to_secret_data(),
                    }
                )
                # Another replica may have created it first: use whatever is stored.
                secret = await self.kube.get("v1", "Secret", name, namespace)
            if secret is None:
                raise kopf.TemporaryError(f"the operator CA Secret {namespace}/{name} vanished", delay=5)
            self._ca = CertificateAuthority.from_secret_data(secret.get("data") or {})
            return self._ca

    def _issued_certificate(
        self, key: ModelKey, secret_name: str, authority: CertificateAuthority
    ) -> IssuedCertificate | None:
        """A certificate this operator issued, unless someone has changed its Secret since."""
        issued = self._issued.get(key, {}).get(secret_name)
        if (
            issued is not None
            and issued.authority is authority
            and self.kube.last_applied("Secret", key[0], secret_name) is issued.applied
        ):
            return issued
        self._issued.get(key, {}).pop(secret_name, None)
        return None

    async def _stored_certificate(
        self, namespace: str, secret_name: str, owned: Sequence[OwnedRef]
    ) -> Mapping[str, Any]:
        """The certificate Secret's data; no read when the index shows there is no such Secret."""
        if not any(ref.kind == "Secret" and ref.name == secret_name for ref in owned):
            return {}
        existing = await self.kube.get("v1", "Secret", secret_name, namespace)
        return dict((existing or {}).get("data") or {})
