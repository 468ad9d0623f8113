"""Model certificates issued by cert-manager instead of the operator's own CA (docs/operator.md).

When the chart (SAMD_CERT_ISSUER) or a ModelTrustPolicy covering the model's namespace names a
cert-manager issuer, the operator applies one cert-manager `Certificate` per Secret the built-in
CA would fill (the server's and one per client), owned by the SecureModel, and reports
CertificatesReady from their Ready conditions. cert-manager writes the Secrets and renews them; the
operator never writes their contents, and the pods it builds are the same either way.

The operator only adopts a Secret cert-manager created for one of its Certificates (it adds the
model's labels and ownerReference, so the Secret is deleted with the model); a Secret of that name
that belongs to someone else is never handed to cert-manager to overwrite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from lightkube.generic_resource import create_namespaced_resource

from samd.operator.builders.certificates import CA_CERT
from samd.operator.builders.certmanager import (
    CERTIFICATE_API_VERSION,
    CERTIFICATE_KIND,
    CERTIFICATE_NAME_ANNOTATION,
    CertificateState,
    ChosenIssuer,
    IssuerConflict,
    certificate_manifests,
    choose_issuer,
)
from samd.operator.builders.context import ModelContext
from samd.operator.builders.metadata import MODEL_LABEL, owned_metadata
from samd.operator.builders.names import model_label_value, tls_secret_name
from samd.operator.conditions import ConditionType
from samd.operator.config import OperatorConfig
from samd.operator.kube import Kube, NotFound
from samd.operator.steps.shared import EventReason, OwnedRef, Run
from samd.operator.timestamps import iso
from samd.policy import TrustPolicy

# Registers the kind with the API wrapper's client (it knows only the built-in kinds and SAMD's own).
create_namespaced_resource("cert-manager.io", "v1", CERTIFICATE_KIND, "certificates")

C = ConditionType
CERT_MANAGER_ANNOTATION_PREFIX = "cert-manager.io/"
Choice = ChosenIssuer | IssuerConflict | None


def _api_missing(error: Exception) -> bool:
    # A namespace's list is never 404 unless the API server has no such resource, i.e.
    # cert-manager's CRDs are not installed.
    return isinstance(error, NotFound)


class CertManagerCertificates:
    """Chooses the issuer of each model's certificates and, when it is cert-manager's, drives it."""

    def __init__(self, kube: Kube, config: OperatorConfig) -> None:
        self.kube = kube
        self.config = config

    def choose(self, covering: Sequence[TrustPolicy]) -> Choice:
        """A policy's issuer, else the chart's; None: the operator's own CA."""
        return choose_issuer(self.config.certificate_issuer, covering)

    async def _certificates_of(self, context: ModelContext) -> dict[str, dict[str, Any]]:
        """The model's Certificates, by name (one LIST, by the model's label)."""
        listed = await self.kube.list_in(
            CERTIFICATE_API_VERSION,
            CERTIFICATE_KIND,
            context.namespace,
            {MODEL_LABEL: model_label_value(context.name)},
        )
        return {
            str(obj["metadata"]["name"]): obj for obj in listed if context.uid in OwnedRef.of(obj).owner_uids
        }

    async def release(self, run: Run, context: ModelContext) -> bool:
        """Back to the operator CA: delete the Certificates an issuer had, so that cert-manager stops
        writing the Secrets the operator is about to issue into (only when the status says one did).

        False when they could not be deleted yet: the operator CA must not issue meanwhile (the two
        would overwrite each other), CertificatesReady says why and the reconcile is retried.
        """
        if not (run.model.status.get("certificates") or {}).get("issuer"):
            return True
        try:
            existing = await self._certificates_of(context)
            for name in sorted(existing):
                await self.kube.delete(CERTIFICATE_API_VERSION, CERTIFICATE_KIND, name, context.namespace)
                await self._forget_issuer(context, name)
        except (kopf.TemporaryError, kopf.PermanentError) as error:
            if _api_missing(error):
                return True  # cert-manager was removed: no Certificate is left to write the Secrets
            message = f"removing the model's cert-manager Certificates before the operator CA issues: {error}"
            run.set(C.CERTIFICATES_READY, None, "CertManagerUnreachable", f"{message}; retrying")
            run.temporary.append(message)
            return False
        if existing:
            run.event(
                EventReason.CERTIFICATE_ISSUER_CHANGED,
                "certificates are issued by the operator CA again; removed Certificate "
                + ", ".join(sorted(existing)),
            )
        return True

    async def _forget_issuer(self, context: ModelContext, secret_name: str) -> None:
        """Remove cert-manager's annotations from a Secret the operator CA is taking back.

        cert-manager decides whether a Secret needs issuing from them (issuer name, kind, group),
        not from who signed its certificate: left in place, they would make a later switch back to
        that issuer keep the operator CA's certificates as if cert-manager had issued them.
        """
        secret = await self.kube.get("v1", "Secret", secret_name, context.namespace)
        annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
        stale = {key: None for key in annotations if key.startswith(CERT_MANAGER_ANNOTATION_PREFIX)}
        if stale:
            await self.kube.patch_merge(
                "v1", "Secret", secret_name, context.namespace, {"metadata": {"annotations": stale}}
            )

    async def ensure(
        self,
        run: Run,
        context: ModelContext,
        owned: Sequence[OwnedRef],
        choice: ChosenIssuer | IssuerConflict,
    ) -> dict[str, Any]:
        """Apply the model's Certificates for the chosen issuer and report CertificatesReady from them.

        Returns `status.certificates`, in the shape the operator CA's path writes, plus `issuer`.
        """
        previous = dict(run.model.status.get("certificates") or {})
        if isinstance(choice, IssuerConflict):
            run.set(C.CERTIFICATES_READY, False, "IssuerConflict", choice.message)
            return previous
        issuer, by = choice.ref, choice.chosen_by
        try:
            existing = await self._certificates_of(context)
        except (kopf.TemporaryError, kopf.PermanentError) as error:
            if _api_missing(error):
                message = (
                    f"the certificate issuer {issuer} (chosen by {by}) is a cert-manager issuer, but this "
                    "cluster serves no cert-manager.io/v1 Certificate API: install cert-manager, or remove "
                    "the issuer to use the operator CA"
                )
                run.set(C.CERTIFICATES_READY, False, "CertManagerMissing", message)
            else:
                message = f"reading the model's cert-manager Certificates: {error}"
                run.set(C.CERTIFICATES_READY, False, "CertManagerUnreachable", message)
            run.temporary.append(message)
            return previous

        states: dict[str, CertificateState] = {}
        wanted = certificate_manifests(context, issuer)
        for manifest in wanted:
            name = str(manifest["metadata"]["name"])
            try:
                refusal = await self._refusal(context, name, owned, existing)
            except (kopf.TemporaryError, kopf.PermanentError) as error:
                run.apply_failed(manifest, error)
                continue
            if refusal is not None:
                run.taken.append(f"Secret {name}")
                run.apply_failed(manifest, kopf.PermanentError(refusal))
                continue
            listed = existing.get(name)
            applied = self.kube.last_applied(CERTIFICATE_KIND, context.namespace, name)
            if (
                listed is not None
                and applied is not None
                and applied.generation != OwnedRef.of(listed).generation
            ):
                # Certificates are not watched: a spec someone else changed (another issuerRef) is
                # seen here, and applied again rather than taken for the operator's own.
                self.kube.forget(CERTIFICATE_KIND, context.namespace, name)
            try:
                stored = await self.kube.apply(manifest)
            except (kopf.TemporaryError, kopf.PermanentError) as error:
                run.apply_failed(manifest, error)
                continue
            states[name] = CertificateState.of(stored if stored is not None else existing.get(name))

        wanted_names = {str(m["metadata"]["name"]) for m in wanted}
        for name in sorted(existing.keys() - wanted_names):  # a client that was removed
            await self.kube.delete(CERTIFICATE_API_VERSION, CERTIFICATE_KIND, name, context.namespace)

        server_name = tls_secret_name(context.name)
        clients = [c.name for c in context.spec.serving.clients]
        server = states.get(server_name)
        ready_clients = [
            client
            for client, manifest in zip(clients, wanted[1:], strict=True)
            if (state := states.get(str(manifest["metadata"]["name"]))) is not None and state.ready
        ]
        status: dict[str, Any] = {
            "serverNotAfter": iso(server.not_after) if server and server.ready and server.not_after else None,
            "clients": ready_clients,
            "issuer": str(issuer),
        }
        waiting = [(name, state) for name, state in states.items() if not state.ready]
        if waiting:
            name, state = waiting[0]
            more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
            detail = f"{state.reason}: {state.message}" if state.reason else state.message
            message = f"waiting for {issuer} (chosen by {by}) to issue Certificate {name}{more}: {detail}"
            run.set(C.CERTIFICATES_READY, False, "WaitingForIssuer", message)
            run.temporary.append(message)  # cert-manager's progress is not watched: look again soon
            return status
        if server is None:
            return status  # not applied: apply_failed set the condition
        secret = await self.kube.get("v1", "Secret", server_name, context.namespace)
        if not ((secret or {}).get("data") or {}).get(CA_CERT):
            message = (
                f"{issuer} (chosen by {by}) issued Secret {server_name} without {CA_CERT}: the model "
                "server verifies its clients against that CA, so it cannot serve; use an issuer that "
                "returns its CA certificate (a cert-manager CA or Vault issuer)"
            )
            run.set(C.CERTIFICATES_READY, False, "NoCACertificate", message)
            return status
        until = status["serverNotAfter"] or "unknown"
        run.set(
            C.CERTIFICATES_READY,
            True,
            "Issued",
            f"issued by cert-manager {issuer} (chosen by {by}); server certificate valid until {until}; "
            f"{len(ready_clients)} client certificate(s)",
        )
        return status

    async def _refusal(
        self,
        context: ModelContext,
        name: str,
        owned: Sequence[OwnedRef],
        existing: Mapping[str, Mapping[str, Any]],
    ) -> str | None:
        """Why the Certificate `name` (and its Secret `name`) may not be applied, or None when it may.

        A model's name, which its author chooses, decides both names: cert-manager would overwrite
        any Secret of that name, so the Secret must be this model's, or not exist yet, or be the one
        cert-manager created for this model's Certificate (then it is adopted here).
        """
        namespace = context.namespace
        foreign = (
            f"already exists in namespace {namespace} and does not belong to SecureModel {context.name}: "
            "the operator never hands an object it did not create to cert-manager; delete or rename it, "
            "or give the SecureModel another name"
        )
        if name not in existing:
            certificate = await self.kube.get(CERTIFICATE_API_VERSION, CERTIFICATE_KIND, name, namespace)
            if certificate is not None and context.uid not in OwnedRef.of(certificate).owner_uids:
                return f"Certificate {name} {foreign}"
        if any(ref.kind == "Secret" and ref.name == name and context.uid in ref.owner_uids for ref in owned):
            return None
        secret = await self.kube.get("v1", "Secret", name, namespace)
        if secret is None or context.uid in OwnedRef.of(secret).owner_uids:
            return None
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        if name in existing and annotations.get(CERTIFICATE_NAME_ANNOTATION) == name:
            # cert-manager created it for this model's Certificate: make it the model's, so that it
            # is deleted with the model. Only metadata: its contents stay cert-manager's.
            await self.kube.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": secret.get("type") or "kubernetes.io/tls",
                    "metadata": owned_metadata(context, name),
                }
            )
            return None
        return f"Secret {name} {foreign}"
