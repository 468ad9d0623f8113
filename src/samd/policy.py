"""Trust-policy evaluation shared by the operator and the admission webhook.

Which ModelTrustPolicies cover a namespace, whether a SecureModel's declared
properties obey them, and whether a signature bundle verifies under one of
their signers. Pure apart from the signature cryptography: no API calls.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from samd.errors import VerificationError
from samd.signing import METADATA_FILE, VerificationResult, Verifier, metadata_digest, verify_bundle
from samd.spec import ModelTrustPolicySpec, SecureModelSpec, TrustedSigner, is_broad_subject, semver_key

DIGEST_REFERENCE = re.compile(r"@sha256:[0-9a-f]{64}$")

PROTECTED_NAMESPACE_LABEL = "samd.dev/protected"
"""Set to "true" by the operator on every namespace SAMD protects (one that holds SecureModels or
that a ModelTrustPolicy selects). The webhook configuration sends pods and workloads only from
namespaces carrying it, so that an outage of the webhook stops nothing elsewhere; the webhook refuses
its removal from a namespace that is still protected."""
PROTECTED_NAMESPACE_VALUE = "true"


@dataclass(frozen=True)
class TrustPolicy:
    name: str
    generation: int
    spec: ModelTrustPolicySpec

    @property
    def enforcing(self) -> bool:
        return self.spec.mode == "enforce"


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: an empty selector matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = (
            expression.get("key"),
            expression.get("operator"),
            expression.get("values") or [],
        )
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False  # an unknown operator never matches: fail closed for coverage checks
    return True


def selector_covers(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """`selector_matches`, where a selector too malformed to read covers everything (fail closed)."""
    try:
        return selector_matches(selector, labels)
    except (AttributeError, TypeError):
        return True


def needs_protection(
    namespace_labels: Mapping[str, str], policy_selectors: Iterable[Mapping[str, Any]], *, holds_models: bool
) -> bool:
    """Whether a namespace with these labels must carry `PROTECTED_NAMESPACE_LABEL`: it holds
    SecureModels, or some policy (usable or not) selects it."""
    return holds_models or any(selector_covers(selector, namespace_labels) for selector in policy_selectors)


def applicable_policies(
    policies: Iterable[TrustPolicy], namespace_labels: Mapping[str, str]
) -> list[TrustPolicy]:
    """The policies whose namespaceSelector matches, in name order (deterministic)."""
    return sorted(
        (p for p in policies if selector_matches(p.spec.namespace_selector, namespace_labels)),
        key=lambda p: p.name,
    )


def check_spec_against_policies(
    spec: SecureModelSpec, policies: Sequence[TrustPolicy], *, previous_version: str | None
) -> list[str]:
    """Violations of the format allow-list, the encryption requirement and the no-downgrade rule."""
    problems: list[str] = []
    for policy in policies:
        allowed = policy.spec.allowed_formats
        if allowed and spec.format not in allowed:
            names = ", ".join(sorted(f.value for f in allowed))
            problems.append(f"policy {policy.name} allows formats {names}, not {spec.format.value}")
        if policy.spec.require_encryption and spec.encryption is None:
            problems.append(f"policy {policy.name} requires encryption: set spec.encryption.keyRef")
        if (
            previous_version is not None
            and not policy.spec.version_policy.allow_downgrade
            and semver_key(spec.version) < semver_key(previous_version)
        ):
            problems.append(
                f"policy {policy.name} forbids downgrades: version {spec.version} is older than "
                f"{previous_version}; publish a new version instead"
            )
        problems += _image_problems(spec, policy)
        problems += _broad_subject_problems(spec, policy)
    return problems


def image_repository(image: str) -> str:
    """The repository of an image reference: without its digest and without its tag."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def image_allowed(image: str, repositories: Iterable[str]) -> bool:
    """Whether `image` is in one of `repositories` (the repository itself or a path below it)."""
    repository = image_repository(image)
    return any(
        repository == allowed.rstrip("/") or repository.startswith(allowed.rstrip("/") + "/")
        for allowed in repositories
    )


def _image_problems(spec: SecureModelSpec, policy: TrustPolicy) -> list[str]:
    """A serving image the user names runs with the model's key-free but model-bearing pod: it must come
    from a repository the policy trusts, pinned by digest so the tag cannot be moved under it."""
    image = spec.serving.image
    if image is None:  # the operator's own image, which the cluster admin configured
        return []
    allowed = policy.spec.allowed_images
    if not image_allowed(image, allowed):
        listed = ", ".join(allowed) if allowed else "none"
        return [
            f"policy {policy.name} does not allow the serving image {image} (allowed repositories: {listed}); "
            "use SAMD's own server (remove spec.serving.image) or ask a cluster admin to add its repository "
            "to the policy's allowedImages"
        ]
    if not DIGEST_REFERENCE.search(image):
        return [
            f"policy {policy.name} requires serving images pinned by digest: use {image_repository(image)}"
            "@sha256:<digest> instead of a tag"
        ]
    return []


VERSION_NOT_SIGNED = "VersionNotSigned"
"""Reason: the signature names no model version (no samd-model.json among the signed files)."""
VERSION_MISMATCH = "VersionMismatch"
"""Reason: the signature names another model name or version than the SecureModel's."""


def check_version_binding(result: VerificationResult, name: str, version: str) -> list[str]:
    """Why the verified signature does not bind SecureModel `name` at `version` (empty if it does).

    The signed manifest must list `samd-model.json` with the SHA-256 of the canonical metadata
    for (name, version) (`samd.signing.metadata_digest`): the binding is checked without reading
    the model. A digest names no version by itself, so a mismatch says what was expected.
    """
    fix = f"samd sign MODEL_DIR --model-name {name} --model-version {version}"
    signed = result.metadata_digest
    if signed is None:
        where = (
            "a single-file model" if result.is_single_file else f"no {METADATA_FILE} among its signed files"
        )
        return [
            f"the signature does not name the model's version ({where}), so nothing binds "
            f"spec.version {version} to the signed content: sign the model directory with `{fix}` "
            "and point spec.artifact and spec.signature at that release"
        ]
    if signed != metadata_digest(name, version):
        return [
            f"the signed model is not {name} version {version}: its {METADATA_FILE} (sha256 {signed}) "
            f"names another model or version (spec.artifact and spec.signature may point at another "
            f"release); point them at the release signed as {name} {version}, or sign it with `{fix}`"
        ]
    return []


def _broad_subject_problems(spec: SecureModelSpec, policy: TrustPolicy) -> list[str]:
    access = spec.access
    subjects = [*access.deployers, *access.reviewers, *(grant.subject for grant in access.grants)]
    allowed = set(policy.spec.allowed_broad_groups)
    return [
        f"policy {policy.name} does not allow granting access to {subject.kind} {subject.name}, which "
        "stands for every user or service account: name the people or service accounts instead (or ask a "
        "cluster admin to list it in the policy's allowedBroadGroups)"
        for subject in dict.fromkeys(subjects)
        if is_broad_subject(subject) and subject.name not in allowed
    ]


def version_binding_reason(result: VerificationResult) -> str:
    """The condition / admission reason for a failed `check_version_binding`."""
    return VERSION_NOT_SIGNED if result.metadata_digest is None else VERSION_MISMATCH


def requiring_signed_version(policies: Iterable[TrustPolicy]) -> list[TrustPolicy]:
    """The policies whose versionPolicy.requireSignedVersion is on."""
    return [p for p in policies if p.spec.version_policy.require_signed_version]


def verifier_for(signer: TrustedSigner) -> Verifier:
    """The verifier of a trusted signer, built once per distinct key material.

    Parsing and normalising the material costs more than a cached admission decision, and the
    webhook needs a policy's verifiers on every verification; a `Verifier` is a frozen value, so
    the one built for the same material is the same verifier whichever policy (or generation of
    it) names it. Invalid material raises each time (errors are not cached).
    """
    if signer.public_key is not None:
        return _cached_verifier("key", signer.public_key, "", "")
    if signer.certificate_roots is not None:
        return _cached_verifier("certificate", signer.certificate_roots, "", "")
    assert signer.keyless is not None  # the spec model guarantees exactly one  # noqa: S101
    keyless = signer.keyless
    return _cached_verifier("sigstore", keyless.trusted_root, keyless.identity, keyless.issuer)


VERIFIER_CACHE_SIZE = 256
"""Distinct signers kept (a few per policy in practice); the least recently used go first."""


@functools.lru_cache(maxsize=VERIFIER_CACHE_SIZE)
def _cached_verifier(method: str, material: str, identity: str, issuer: str) -> Verifier:
    if method == "key":
        return Verifier.from_public_key(material.encode())
    if method == "certificate":
        return Verifier.from_certificate_roots(material.encode())
    return Verifier.from_sigstore(identity=identity, issuer=issuer, trusted_root=material.encode())


def verify_under_policies(bundle: bytes, policies: Sequence[TrustPolicy]) -> tuple[VerificationResult, str]:
    """Verify `bundle` under every covering policy; each must trust one of its signers.

    Returns the result and the name of the first policy. Raises VerificationError naming, per
    policy, why no signer accepted it.
    """
    if not policies:
        raise VerificationError(
            "no ModelTrustPolicy covers this namespace", hint="ask a cluster admin for one"
        )
    result: VerificationResult | None = None
    for policy in policies:
        failures = []
        for signer in policy.spec.signers:
            try:
                result = verify_bundle(bundle, verifier_for(signer))
                break
            except VerificationError as error:
                failures.append(f"{signer.name}: {error.message}")
        else:
            raise VerificationError(
                f"no signer trusted by policy {policy.name} verifies the signature ({'; '.join(failures)})",
                hint="sign the model with a key the policy trusts, or add the signer to the policy",
            )
    assert result is not None  # noqa: S101 - policies is not empty
    return result, policies[0].name
