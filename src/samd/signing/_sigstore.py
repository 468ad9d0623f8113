"""Offline verification of Sigstore keyless bundles with sigstore-python's public API.

Imported only when a Sigstore verifier is used: sigstore-python costs ~70 MB of memory to import.
The trusted root (Fulcio CA, Rekor and CT log keys, optional TSAs) is given by the caller, so
nothing is fetched from the network (no TUF refresh). sigstore-python checks the certificate chain
at the log's integrated time, the embedded SCT, the Rekor inclusion proof, checkpoint and promise,
the DSSE signature, and the identity policy (SAN and OIDC issuer, exact match).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from samd.errors import UsageError, VerificationError

if TYPE_CHECKING:
    from samd.signing.model import Verifier

TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
CLIENT_TRUST_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"


def normalize_trusted_root(raw: bytes) -> bytes:
    """The TrustedRoot JSON, taken out of a ClientTrustConfig if needed; checked for shape only."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise UsageError("the Sigstore trusted root is not JSON") from error
    if isinstance(document, dict) and document.get("mediaType") == CLIENT_TRUST_CONFIG_MEDIA_TYPE:
        document = document.get("trustedRoot")
    if not isinstance(document, dict) or document.get("mediaType") != TRUSTED_ROOT_MEDIA_TYPE:
        raise UsageError(
            "the file is not a Sigstore trusted root",
            hint=f"expected mediaType {TRUSTED_ROOT_MEDIA_TYPE} (or a ClientTrustConfig holding one)",
        )
    for section in ("certificateAuthorities", "tlogs", "ctlogs"):
        if not document.get(section):
            raise UsageError(
                f"the Sigstore trusted root has no {section}: keyless signatures cannot be verified"
            )
    return json.dumps(document, sort_keys=True).encode()


@functools.lru_cache(maxsize=8)
def _sigstore_verifier(trusted_root_json: bytes) -> Any:
    from sigstore.errors import Error as SigstoreError  # noqa: PLC0415 -- ~70 MB: only for keyless
    from sigstore.models import TrustedRoot  # noqa: PLC0415 -- ~70 MB: only for keyless
    from sigstore.verify import Verifier as SigstoreVerifier  # noqa: PLC0415 -- ~70 MB: only for keyless
    from sigstore_models.trustroot import v1 as trustroot_v1  # noqa: PLC0415 -- ~70 MB: only for keyless

    try:
        # TrustedRoot.from_file only takes a path; this is the same two steps from bytes.
        root = TrustedRoot(trustroot_v1.TrustedRoot.from_json(trusted_root_json))
        return SigstoreVerifier(trusted_root=root)
    except (SigstoreError, ValueError) as error:
        raise UsageError(f"the Sigstore trusted root cannot be used: {error}") from error


def verify_bundle(raw_bundle: bytes, verifier: Verifier) -> tuple[str, bytes]:
    """(payload type, payload) of a keyless DSSE bundle that verifies under `verifier`."""
    from sigstore.errors import Error as SigstoreError  # noqa: PLC0415 -- ~70 MB: only for keyless
    from sigstore.models import Bundle  # noqa: PLC0415 -- ~70 MB: only for keyless
    from sigstore.verify.policy import Identity  # noqa: PLC0415 -- ~70 MB: only for keyless

    if verifier.trusted_root_json is None or verifier.identity is None or verifier.oidc_issuer is None:
        raise UsageError("a Sigstore verifier needs a trusted root, an identity and an OIDC issuer")
    sigstore_verifier = _sigstore_verifier(verifier.trusted_root_json)
    try:
        bundle = Bundle.from_json(raw_bundle)
    except (SigstoreError, ValueError) as error:
        raise VerificationError(f"the Sigstore bundle is malformed: {error}") from error
    policy = Identity(identity=verifier.identity, issuer=verifier.oidc_issuer)
    try:
        payload_type, payload = sigstore_verifier.verify_dsse(bundle=bundle, policy=policy)
    except Exception as error:  # fail closed: whatever sigstore-python raises means "not verified"
        reason = str(error) or type(error).__name__
        raise VerificationError(f"Sigstore verification failed: {reason}") from error
    return str(payload_type), bytes(payload)
