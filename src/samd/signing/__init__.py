"""Model signing and verification in the OpenSSF Model Signing (OMS) format.

A signature is a Sigstore bundle (v0.3) around a DSSE envelope whose in-toto statement lists every
model file with its SHA-256 (`predicate.resources`), the serialization used, and as subject the
model name with the manifest digest. Signing uses the `model_signing` library, so signatures made
by its CLI verify here and ours verify with it.

Signers: an EC private key, a key with an X.509 certificate chain, or a PKCS#11 key (HSM).
Verifiers: an EC public key (also for PKCS#11 signatures), trusted certificate roots, or a
Sigstore identity and OIDC issuer checked offline against a given trusted root.

Resource names: POSIX paths relative to the model directory ("model.onnx", "dir/weights.bin").
A SINGLE-FILE model is recorded as ONE resource named "." (`SINGLE_FILE_RESOURCE`): OMS hashes
the file relative to itself. Its base name appears only as the statement's subject name
(`VerificationResult.model_name`), which is informative and not part of what identifies the
files. So `samd fetch` maps a single-file artifact's digest to "." when comparing.

Name and version: `sign_model(..., model_version=V, model_name=N)` first writes the metadata file
`samd-model.json` (`METADATA_FILE`, content `metadata_bytes(N, V)`) into the model directory, so
the signature binds the model's name and version to its content; verifiers compare the manifest's
entry for it with `metadata_digest(N, V)` without reading the model (`samd.signing.metadata`).

Importing this package is cheap: `cryptography`, `model_signing` and `sigstore` are imported only
by the functions that need them. Verification of key and certificate signatures never imports
`model_signing` or `sigstore` (they cost ~75 MB of memory; the init container has 64 MiB).
"""

from samd.signing.metadata import (
    METADATA_FILE,
    metadata_bytes,
    metadata_digest,
    parse_metadata,
    read_signed_metadata,
)
from samd.signing.model import (
    MAX_BUNDLE_BYTES,
    MAX_NAME_BYTES,
    MAX_RESOURCES,
    SINGLE_FILE_RESOURCE,
    ManifestMismatchError,
    SignedFile,
    Signer,
    VerificationResult,
    Verifier,
    key_id,
)
from samd.signing.sign import SigningResult, sign_model
from samd.signing.statement import check_resource_name
from samd.signing.verify import check_files_against_manifest, inspect_signature, verify_bundle, verify_model

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_NAME_BYTES",
    "MAX_RESOURCES",
    "METADATA_FILE",
    "SINGLE_FILE_RESOURCE",
    "ManifestMismatchError",
    "SignedFile",
    "Signer",
    "SigningResult",
    "VerificationResult",
    "Verifier",
    "check_files_against_manifest",
    "check_resource_name",
    "inspect_signature",
    "key_id",
    "metadata_bytes",
    "metadata_digest",
    "parse_metadata",
    "read_signed_metadata",
    "sign_model",
    "verify_bundle",
    "verify_model",
]
