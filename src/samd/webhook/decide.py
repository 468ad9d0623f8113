"""The admission policy: which Pods, workloads and SecureModels are admitted, and why not.

`PolicyDecider` is the ``Decider`` the server calls. It reads only the watched state (no API call)
and verifies signature bundles through the verification cache (no model bytes are hashed: the
bundle's signature and manifest are checked, and the pod must pin the manifest digest that the
verifying loader then checks against the bytes). The rules themselves are plain functions over
plain objects, which the unit tests call directly.

The rules, in a namespace that a ModelTrustPolicy covers or that holds a SecureModel (so that
relabelling a namespace cannot switch them off below its models):

- A pod, or the pod template of a workload, that names a SecureModel in its ``samd.dev/model``
  annotation is admitted only if the model exists, a policy covers the namespace, its signature
  bundle (stored by the operator) verifies under EVERY covering policy, the pod's
  ``samd.dev/model-digest`` is the verified manifest digest, the signature binds the model's name
  and version where a policy requires it, the model's format obeys the policies, the first init
  container is the verifying loader exactly as the operator builds it (see `check_loader`), every
  container is hardened (see `check_pod_security`), and the whole pod is the one the operator
  builds for the model (see `samd.webhook.podshape`).
- A pod that uses a model's key Secret, TLS Secret or client certificate Secrets (in any way the
  pod spec can name a Secret), or passes a model's artifact URI to a container, without running
  that model through its loader, is refused as a bypass attempt (also when it runs another model);
  so is a pod that carries a model's selector label or runs as its ServiceAccount without being
  its pod, and any pod with a hostPath showing the kubelet's pod directories.
- A SecureModel is admitted only if its spec parses and obeys the policies (format allow-list,
  encryption required, no version downgrade on update unless a policy allows it, serving image,
  broad subjects, the URIs it points the operator at), and if its author may use what it names
  (`samd.webhook.access`: checked wherever the SecureModel is, never only a warning).
- A Namespace holding SecureModels may not be relabelled out of a policy that covers it.

Every violation is charged to the policies that require it: a policy's own checks (its signers,
formats, encryption, downgrades) to that policy, SAMD's baseline checks to every covering policy.
When all the policies charged with some violation are in ``warn`` mode the request is admitted
with warnings; a violation charged to an enforcing policy denies. Anything unexpected raises and
the server denies (fail closed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from samd.errors import SamdError, VerificationError
from samd.operator.builders.context import BuilderSettings, ModelContext
from samd.operator.builders.metadata import MODEL_ANNOTATION, MODEL_DIGEST_ANNOTATION, MODEL_LABEL
from samd.operator.builders.names import model_label_value, workload_service_account_name
from samd.operator.builders.serving import FETCH_CONTAINER, build_deployment
from samd.operator.config import OperatorConfig
from samd.policy import (
    PROTECTED_NAMESPACE_LABEL,
    PROTECTED_NAMESPACE_VALUE,
    TrustPolicy,
    check_spec_against_policies,
    check_version_binding,
    selector_covers,
    verify_under_policies,
    version_binding_reason,
)
from samd.signing import VerificationResult
from samd.spec import SEMVER, SecureModelSpec, parse_secure_model
from samd.storage import guard as uri_guard
from samd.webhook.access import AccessReviewer, required_permissions
from samd.webhook.cache import VerificationCache, VerificationKey
from samd.webhook.podshape import ExpectedPod, compare_pod
from samd.webhook.review import AdmissionRequest, Decision
from samd.webhook.state import (
    URI_CONTINUES,
    InvalidPolicy,
    NamespaceIndex,
    SignatureBundle,
    WatchedModel,
    WatchedState,
)
from samd.webhook.workloads import (
    KUBELET_ROOT,
    TEMPLATE_PATHS,
    MalformedWorkloadError,
    PodTemplate,
    containers,
    items,
    kubelet_host_paths,
    mentioned_strings,
    pod_annotations,
    pod_template,
    secret_references,
    sub,
    template_path,
    volume_mounters,
)

DEFAULT_LOADER_IMAGE = OperatorConfig().default_image
"""The image the operator runs `samd-fetch` from unless told otherwise (SAMD_IMAGE)."""

# Reasons (metav1.Status reasons, CamelCase) ------------------------------------------------------
NOT_APPLICABLE = "NotApplicable"
NOT_COVERED = "NotCovered"
UNCHANGED = "Unchanged"
NO_MODEL = "NoModelReferenced"
VERIFIED = "Verified"
SPEC_ACCEPTED = "PolicySatisfied"
WARNED = "Warned"

MALFORMED = "MalformedObject"
INVALID_POLICY = "InvalidPolicy"
MODEL_NOT_FOUND = "ModelNotFound"
INVALID_MODEL = "InvalidModel"
SIGNATURE_MISSING = "SignatureMissing"
SIGNATURE_INVALID = "SignatureInvalid"
DIGEST_MISMATCH = "DigestMismatch"
POLICY_VIOLATION = "PolicyViolation"
LOADER_MISSING = "LoaderMissing"
LOADER_ALTERED = "LoaderAltered"
INSECURE_POD = "InsecurePod"
KEY_EXPOSED = "KeyExposed"
BYPASS_ATTEMPT = "BypassAttempt"
INVALID_SPEC = "InvalidSpec"
POD_ALTERED = "PodAltered"
NOT_PERMITTED = "NotPermitted"
NO_TRUST_POLICY = "NoTrustPolicy"
COVERAGE_REMOVED = "CoverageRemoved"
QUARANTINED = "Quarantined"

SECURE_MODEL_KIND = "SecureModel"
_GROUPS = {"Pod": "", "Deployment": "apps", "StatefulSet": "apps", "DaemonSet": "apps", "ReplicaSet": "apps"}
_GROUPS |= {"Job": "batch", "CronJob": "batch", SECURE_MODEL_KIND: "samd.dev", "Namespace": ""}
_CHECKED_OPERATIONS = ("CREATE", "UPDATE")
_POD_SUBRESOURCES = ("", "ephemeralcontainers")
SECCOMP_TYPES = ("RuntimeDefault", "Localhost")
MAX_KEPT_LOADERS = 4096


@dataclass(frozen=True)
class DecisionConfig:
    """The policy's own settings, built once at start-up (docs/architecture.md, style rule 7)."""

    allowed_loader_images: tuple[str, ...] = (DEFAULT_LOADER_IMAGE,)
    """Images `samd-fetch` may run from, compared exactly (pin by digest to be strict)."""
    builder_settings: BuilderSettings = field(default_factory=lambda: BuilderSettings.of(OperatorConfig()))
    """The operator's settings, from the same SAMD_* variables: model pods are compared with what the
    operator's builder makes with them."""

    def __post_init__(self) -> None:
        if not self.allowed_loader_images or not all(self.allowed_loader_images):
            raise SamdError(
                "the webhook needs at least one allowed loader image",
                hint="set SAMD_WEBHOOK_LOADER_IMAGES to the image(s) the operator runs samd-fetch from",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DecisionConfig:
        """SAMD_WEBHOOK_LOADER_IMAGES: comma-separated images; else the operator's SAMD_IMAGE or default."""
        env = os.environ if env is None else env
        settings = BuilderSettings.of(OperatorConfig.from_env(env))
        listed = env.get("SAMD_WEBHOOK_LOADER_IMAGES")
        if listed is not None:
            return cls(tuple(image.strip() for image in listed.split(",") if image.strip()), settings)
        return cls((env.get("SAMD_IMAGE") or DEFAULT_LOADER_IMAGE,), settings)


@dataclass(frozen=True)
class Violation:
    """One reason to refuse, and the policies that require it (None: every covering policy)."""

    reason: str
    message: str
    policies: frozenset[str] | None = None


@dataclass(frozen=True)
class Coverage:
    """The policies that cover a namespace: usable ones, and ones SAMD cannot use (they fail closed)."""

    policies: tuple[TrustPolicy, ...]
    invalid: tuple[InvalidPolicy, ...] = ()
    holds_models: bool = False
    """The namespace holds SecureModels: SAMD's own rules apply there whatever the selectors say."""

    @property
    def covered(self) -> bool:
        return bool(self.policies or self.invalid or self.holds_models)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.policies) | {p.name for p in self.invalid}

    @property
    def enforcing(self) -> frozenset[str]:
        """Policies whose violations deny; an unusable policy's mode is unknown, so it enforces."""
        return frozenset(p.name for p in self.policies if p.enforcing) | {p.name for p in self.invalid}


Verifications = Mapping[str, VerificationResult | VerificationError]
"""Policy name -> the bundle's verification under that policy's signers, or why it failed."""


# --- coverage and the conclusion ------------------------------------------------------------------


def coverage(state: WatchedState, namespace: str) -> Coverage:
    """The policies covering `namespace`. A namespace the watch has not seen yet (just created)
    gets every policy: the strictest reading, so that a race never admits what a policy forbids.
    A namespace that holds SecureModels is covered even when no policy selects it any more, so
    that relabelling it cannot switch SAMD off below its models (their pods are then refused)."""
    labels = state.namespace_labels(namespace)
    return Coverage(
        tuple(
            sorted(
                (p for p in state.policies() if labels is None or _covers(p.spec.namespace_selector, labels)),
                key=lambda p: p.name,
            )
        ),
        tuple(
            sorted(
                (
                    p
                    for p in state.invalid_policies()
                    if labels is None or _covers(p.namespace_selector, labels)
                ),
                key=lambda p: p.name,
            )
        ),
        holds_models=any(True for _ in state.models_in(namespace)),
    )


def covering_policy_names(state: WatchedState, labels: Mapping[str, str]) -> set[str]:
    """The names of the policies (usable or not) whose selectors match `labels`."""
    names = {p.name for p in state.policies() if _covers(p.spec.namespace_selector, labels)}
    return names | {p.name for p in state.invalid_policies() if _covers(p.namespace_selector, labels)}


def _covers(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """`samd.policy.selector_covers`: a selector too malformed to read covers everything."""
    return selector_covers(selector, labels)


def invalid_policy_violations(cover: Coverage) -> list[Violation]:
    return [
        Violation(
            INVALID_POLICY,
            f"ModelTrustPolicy {p.name} covers this namespace but cannot be used ({p.problem}); until a "
            "cluster admin fixes it, SAMD refuses what it would have to check against it",
            frozenset({p.name}),
        )
        for p in cover.invalid
    ]


def conclude(
    violations: Sequence[Violation],
    cover: Coverage,
    *,
    model: str | None,
    allowed_reason: str,
    allowed_message: str,
) -> Decision:
    """Deny if an enforcing policy is charged with a violation; admit with warnings if only warn-mode
    policies are; admit otherwise."""
    policy_names = ",".join(sorted(cover.names)) or None
    enforced: list[Violation] = []
    warned: list[Violation] = []
    for violation in violations:
        charged = violation.policies if violation.policies is not None else cover.names
        (enforced if charged & cover.enforcing or not charged else warned).append(violation)
    warnings = tuple(f"{_warn_prefix(v, cover)}{v.message}" for v in warned)
    if enforced:
        deciding = frozenset().union(*((v.policies or cover.enforcing) for v in enforced)) & cover.enforcing
        return Decision(
            allowed=False,
            message="; ".join(v.message for v in enforced),
            reason=enforced[0].reason,
            warnings=warnings,
            model=model,
            policy=",".join(sorted(deciding)) or policy_names,
        )
    if warned:
        return Decision(
            allowed=True,
            message=f"admitted because the policies concerned are in warn mode: {warnings[0]}",
            reason=WARNED,
            warnings=warnings,
            model=model,
            policy=policy_names,
        )
    return Decision(
        allowed=True, message=allowed_message, reason=allowed_reason, model=model, policy=policy_names
    )


def _warn_prefix(violation: Violation, cover: Coverage) -> str:
    charged = violation.policies if violation.policies is not None else cover.names
    return f"SAMD (warn mode, {', '.join(sorted(charged))}): "


# --- SecureModel create and update -----------------------------------------------------------------


def check_secure_model(
    obj: Mapping[str, Any], old: Mapping[str, Any] | None, cover: Coverage
) -> list[Violation]:
    """A SecureModel's spec against the policies: it parses, its format is allowed, it is encrypted
    where required, and an update does not lower its version unless every policy allows it."""
    violations = invalid_policy_violations(cover)
    raw = obj.get("spec")
    if not isinstance(raw, Mapping):
        return [
            *violations,
            Violation(INVALID_SPEC, "the SecureModel has no spec: add one and apply it again"),
        ]
    try:
        spec = parse_secure_model(raw)
    except SamdError as error:
        return [*violations, Violation(INVALID_SPEC, str(error))]
    previous = _previous_version(old)
    for policy in cover.policies:
        for problem in check_spec_against_policies(spec, [policy], previous_version=previous):
            violations.append(Violation(POLICY_VIOLATION, problem, frozenset({policy.name})))
    # No confused deputy: URIs the operator would refuse to open, by the strings alone (no DNS here).
    violations += [Violation(uri_guard.REASON, p) for p in uri_guard.admission_problems(raw, cover.policies)]
    return violations


def _previous_version(old: Mapping[str, Any] | None) -> str | None:
    """The old object's version, when it is one (the CRD makes it semver; anything else is ignored)."""
    value = sub(old or {}, "spec").get("version")
    return value if isinstance(value, str) and SEMVER.match(value) else None


# --- pods and pod templates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """The thing a message talks about: 'this Pod' or 'the pod template (spec.template) of this Job'."""

    kind: str

    def __str__(self) -> str:
        if self.kind == "Pod":
            return "this Pod"
        return f"the pod template ({template_path(self.kind)}) of this {self.kind}"


def referenced_model(template: PodTemplate) -> str | None:
    """The SecureModel the pod (template) names in its `samd.dev/model` annotation, if any."""
    return pod_annotations(template.metadata).get(MODEL_ANNOTATION)


def signature_problem(model: WatchedModel, signature: SignatureBundle | None) -> Violation | None:
    """Why the operator-stored signature of `model` cannot be used, or None when it can."""
    wait = (
        f"wait until `kubectl get securemodel {model.name} -n {model.namespace}` shows it Verified, "
        "then create the workload again"
    )
    if signature is None:
        return Violation(
            SIGNATURE_MISSING,
            f"SecureModel {model.name} has no verified signature yet (the operator stores it in a ConfigMap "
            f"once it has fetched it): {wait}",
        )
    if model.uid and model.uid not in signature.owner_uids:
        return Violation(
            SIGNATURE_MISSING,
            f"ConfigMap {signature.config_map} is not the signature the operator stored for SecureModel "
            f"{model.name} (it is not owned by it): {wait}",
        )
    if signature.bundle is None:
        return Violation(
            SIGNATURE_MISSING,
            f"ConfigMap {signature.config_map} holds no signature bundle ({signature.problem}): {wait}",
        )
    return None


def verified_digest(verifications: Verifications) -> str | None:
    """The manifest digest of the bundle, from any policy under which it verified."""
    for outcome in verifications.values():
        if isinstance(outcome, VerificationResult):
            return outcome.manifest_digest
    return None


def check_model_pod(
    template: PodTemplate,
    subject: Subject,
    model: WatchedModel,
    *,
    verifications: Verifications,
    cover: Coverage,
    config: DecisionConfig,
    expected: ExpectedLoader | None = None,
) -> list[Violation]:
    """The rules for a pod (template) that names `model`, once its bundle has been verified per policy.

    (Bypass and hardening rules are separate: `check_bypass`, `check_pod_security`.)
    """
    assert model.spec is not None  # noqa: S101 - the caller reports a model without a spec
    violations: list[Violation] = []
    for policy in cover.policies:
        outcome = verifications.get(policy.name)
        if isinstance(outcome, VerificationError):
            violations.append(
                Violation(
                    SIGNATURE_INVALID,
                    f"the signature of SecureModel {model.name} does not verify under ModelTrustPolicy "
                    f"{policy.name}: {outcome}",
                    frozenset({policy.name}),
                )
            )
        elif outcome is None:  # the caller verifies under every covering policy
            raise RuntimeError(f"no verification of {model.ref} under policy {policy.name} was made")
        elif policy.spec.version_policy.require_signed_version:
            # The verified bundle must name the model and its current version (samd-model.json).
            violations += [
                Violation(
                    version_binding_reason(outcome),
                    f"SecureModel {model.name}: policy {policy.name} requires a signed version: {problem}",
                    frozenset({policy.name}),
                )
                for problem in check_version_binding(outcome, model.name, model.spec.version)
            ]
        for problem in check_spec_against_policies(model.spec, [policy], previous_version=None):
            violations.append(
                Violation(POLICY_VIOLATION, f"SecureModel {model.name}: {problem}", frozenset({policy.name}))
            )
    digest = verified_digest(verifications)
    if digest is not None:
        violations += check_digest(template, subject, model, digest)
    violations += check_loader(template, subject, model, digest, config, expected=expected)
    return violations


def check_digest(
    template: PodTemplate, subject: Subject, model: WatchedModel, digest: str
) -> list[Violation]:
    """The pod pins the verified manifest digest, and the model's own pin (if any) agrees."""
    violations: list[Violation] = []
    pinned = pod_annotations(template.metadata).get(MODEL_DIGEST_ANNOTATION)
    if pinned is None:
        violations.append(
            Violation(
                DIGEST_MISMATCH,
                f"{subject} does not pin the model digest: add the annotation "
                f"{MODEL_DIGEST_ANNOTATION}: {digest} (the verified signature of SecureModel {model.name})",
            )
        )
    elif pinned != digest:
        violations.append(
            Violation(
                DIGEST_MISMATCH,
                f"{subject} pins model digest {pinned} ({MODEL_DIGEST_ANNOTATION}), but the verified signature "
                f"of SecureModel {model.name} covers {digest}: deploy the signed version, or sign this one",
            )
        )
    assert model.spec is not None  # noqa: S101
    if model.spec.artifact.digest and model.spec.artifact.digest != digest:
        violations.append(
            Violation(
                DIGEST_MISMATCH,
                f"SecureModel {model.name} pins spec.artifact.digest {model.spec.artifact.digest}, but its "
                f"signature covers {digest}: sign the model again or fix the pin",
            )
        )
    return violations


# --- the verifying loader --------------------------------------------------------------------------
#
# The init container `samd-fetch` is what makes the pinned digest true of the bytes: it downloads,
# decrypts and hashes the model and refuses to start on any mismatch. So it must be the first init
# container (nothing runs before it), run an allowed image, and run the exact command the operator
# builds for this model and the verified digest. The expected container is built by the operator's
# own builder (`build_deployment`), so the webhook and the operator can never disagree on flags.
# What is compared, and why:
# - the command line (command + args): its words (`samd fetch <artifact URI>`) exactly, and its
#   `--flag value` pairs as a set: order-insensitive (also `--flag=value`), but every flag and value
#   must be the operator's and no flag may be added, repeated or dropped (`--expect-digest` must be
#   the verified digest);
# - the environment: exactly the operator's (storage credentials from their Secret), nothing added,
#   no envFrom: a variable such as PYTHONPATH or LD_PRELOAD could change what the loader runs;
# - the mounts: only at the operator's paths, each from a volume of the same type and object (the
#   trust ConfigMap, the key Secret, memory volumes): a volume mounted over the loader's code would
#   alter it; no volumeDevices;
# - after it: no other container may write to the volume the model is fetched into, so the
#   verified bytes are the ones served.
# Not compared: resources, probes, pull policy, termination settings: they do not change what is
# loaded. Security settings are checked for every container by `check_pod_security`.


_LOADER_SETTINGS = BuilderSettings(
    default_image=DEFAULT_LOADER_IMAGE, fetch_image=DEFAULT_LOADER_IMAGE, operator_namespace=""
)
"""Only the spec and the digest shape the builder's init container; the settings are placeholders."""


@dataclass(frozen=True)
class ExpectedLoader:
    """What the operator's `samd-fetch` init container is for one model and digest, ready to compare."""

    words: list[str]
    flags: dict[str, list[str]]
    env: dict[str, tuple[object, object, object]]
    mounts: dict[str, tuple[str, str]]
    """mountPath -> (volume type, object name) of the volume mounted there."""
    model_dir: str | None

    @classmethod
    def build(cls, model: WatchedModel, digest: str) -> ExpectedLoader:
        return cls.of_pod(_operator_pod(model, digest, _LOADER_SETTINGS))

    @classmethod
    def of_pod(cls, pod: Mapping[str, Any]) -> ExpectedLoader:
        """From the pod spec of a Deployment the operator's builder made (whatever its settings: they
        shape the images and volume sizes, none of what is compared here)."""
        loader = pod["initContainers"][0]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        words, flags = parse_argv(loader["command"])
        output = flags.get("--output")
        return cls(
            words=words,
            flags=flags,
            env=_env_entries(loader),
            mounts={
                mount["mountPath"]: _volume_identity(volumes.get(mount["name"]))
                for mount in items(loader, "volumeMounts")
            },
            model_dir=output[0] if output else None,
        )


def expected_for(
    model: WatchedModel, digest: str, settings: BuilderSettings, samd_images: Collection[str]
) -> tuple[ExpectedLoader, ExpectedPod | None]:
    """The operator's loader and pod for `model` and `digest`, from one build of its Deployment.

    The loader is expected even when the model's serving is off (there is then no operator's pod:
    None), so it is built with serving on; with serving on that is the model's own spec.
    """
    assert model.spec is not None  # noqa: S101 - callers report a model without a spec
    pod = _operator_pod(model, digest, settings)
    loader = ExpectedLoader.of_pod(pod)
    return loader, ExpectedPod.of_pod(pod, settings, samd_images) if model.spec.serving.enabled else None


def _operator_pod(model: WatchedModel, digest: str, settings: BuilderSettings) -> dict[str, Any]:
    """The pod spec of the Deployment the operator's builder makes for `model`, serving on."""
    assert model.spec is not None  # noqa: S101 - callers report a model without a spec
    context = ModelContext(
        name=model.name,
        namespace=model.namespace,
        uid=model.uid,
        spec=_serving_on(model.spec),
        manifest_digest=digest,
        settings=settings,
    )
    deployment = build_deployment(context)
    assert deployment is not None  # noqa: S101 - serving is on and the digest is set
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _serving_on(spec: SecureModelSpec) -> SecureModelSpec:
    """The spec with serving enabled: the loader is the same whether the operator serves it or not."""
    if spec.serving.enabled:
        return spec
    return spec.model_copy(update={"serving": spec.serving.model_copy(update={"enabled": True})})


def parse_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Positional words and `--flag value` (or `--flag=value`) pairs of a command line."""
    positional: list[str] = []
    flags: dict[str, list[str]] = {}
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if word.startswith("--"):
            flag, equals, value = word.partition("=")
            if not equals:
                if index < len(argv) and not argv[index].startswith("--"):
                    value = argv[index]
                    index += 1
                else:
                    value = ""
            flags.setdefault(flag, []).append(value)
        else:
            positional.append(word)
    return positional, flags


def compare_argv(actual: Sequence[str], expected: ExpectedLoader) -> list[str]:
    """How `actual` differs from the operator's `samd fetch` command line (empty when equivalent)."""
    actual_words, actual_flags = parse_argv(actual)
    problems: list[str] = []
    if actual_words != expected.words:
        problems.append(
            f"runs {' '.join(actual_words) or '(nothing)'!r} instead of {' '.join(expected.words)!r}"
        )
    for flag in sorted(expected.flags.keys() | actual_flags.keys()):
        want, have = expected.flags.get(flag), actual_flags.get(flag)
        if have is None:
            problems.append(f"{flag} is missing (the operator sets {flag} {want[0] if want else ''})")
        elif want is None:
            problems.append(f"{flag} is not a flag the operator sets")
        elif len(have) > 1:
            problems.append(f"{flag} is given {len(have)} times")
        elif have != want:
            problems.append(f"{flag} is {have[0]!r}, the operator sets {want[0]!r}")
    return problems


def _volume_identity(volume: Mapping[str, Any] | None) -> tuple[str, str]:
    """A volume's type and the object it shows (name of the ConfigMap/Secret/claim; '' for others)."""
    if volume is None:
        return ("missing", "")
    for source, value in volume.items():
        if source == "name" or not isinstance(value, dict):
            continue
        for key in ("secretName", "name", "claimName"):
            if isinstance(value.get(key), str):
                return (source, value[key])
        return (source, "")
    return ("none", "")


def _env_entries(container: Mapping[str, Any]) -> dict[str, tuple[object, object, object]]:
    entries = {}
    for env in items(container, "env"):
        reference = sub(sub(env, "valueFrom"), "secretKeyRef")
        entries[env["name"]] = (env.get("value"), reference.get("name"), reference.get("key"))
        if sub(env, "valueFrom").keys() - {"secretKeyRef"}:
            entries[env["name"]] = (env.get("value"), "(other source)", None)
    return entries


def check_loader(
    template: PodTemplate,
    subject: Subject,
    model: WatchedModel,
    digest: str | None,
    config: DecisionConfig,
    *,
    expected: ExpectedLoader | None = None,
) -> list[Violation]:
    """The first init container is `samd-fetch`, from an allowed image, unaltered (see above).

    Without a verified digest only its presence and image are checked (the pod is refused anyway).
    `expected` is `ExpectedLoader.build(model, digest)`, which callers may keep between requests.
    """
    spec = template.spec
    init_containers = items(spec, "initContainers")
    fix = (
        f"deploy SecureModel {model.name} with the operator's Deployment, or copy its {FETCH_CONTAINER} "
        "init container unchanged"
    )
    if not init_containers or init_containers[0]["name"] != FETCH_CONTAINER:
        where = (
            "is not the first init container"
            if any(c["name"] == FETCH_CONTAINER for c in init_containers)
            else "is missing"
        )
        return [
            Violation(
                LOADER_MISSING,
                f"{subject} runs SecureModel {model.name} but the verifying loader {FETCH_CONTAINER} {where}: "
                f"nothing may run before it; {fix}",
            )
        ]
    loader = init_containers[0]
    image = loader.get("image") or ""
    problems: list[str] = []
    if image not in config.allowed_loader_images:
        problems.append(
            f"its image {image!r} is not an allowed loader image ({', '.join(config.allowed_loader_images)})"
        )
    if digest is not None:
        if expected is None:
            expected = ExpectedLoader.build(model, digest)
        argv = [*(loader.get("command") or ()), *(loader.get("args") or ())]
        problems += [f"its command {p}" for p in compare_argv(argv, expected)]
        if _env_entries(loader) != expected.env:
            wanted = ", ".join(sorted(expected.env)) or "none"
            problems.append(f"its environment differs from the operator's (variables: {wanted})")
        if items(loader, "envFrom"):
            problems.append("it takes variables from envFrom, which the operator never sets")
        if items(loader, "volumeDevices"):
            problems.append("it has volumeDevices, which the operator never sets")
        problems += _mount_problems(spec, loader, expected)
    if not problems:
        return []
    return [
        Violation(
            LOADER_ALTERED,
            f"the verifying loader {FETCH_CONTAINER} of {subject} is altered: {'; '.join(problems)}; {fix}",
        )
    ]


def _mount_problems(
    spec: Mapping[str, Any], loader: Mapping[str, Any], expected: ExpectedLoader
) -> list[str]:
    volumes = {volume["name"]: volume for volume in items(spec, "volumes")}
    problems: list[str] = []
    model_volume: str | None = None
    for mount in items(loader, "volumeMounts"):
        path = mount["mountPath"]
        wanted = expected.mounts.get(path)
        if wanted is None:
            problems.append(f"it mounts a volume at {path}, where the operator mounts none")
            continue
        found = _volume_identity(volumes.get(mount["name"]))
        if found[0] != wanted[0] or (wanted[1] and found[1] != wanted[1]):
            problems.append(
                f"its volume at {path} is {found[0]} {found[1]}".rstrip()
                + f", the operator mounts {wanted[0]} {wanted[1]}".rstrip()
            )
        elif path == expected.model_dir:
            model_volume = mount["name"]
    if model_volume is not None:
        for name, mount in volume_mounters(spec).get(model_volume, []):
            if name != FETCH_CONTAINER and mount.get("readOnly") is not True:
                problems.append(
                    f"container {name} mounts the model volume {model_volume} writable: mount it readOnly so "
                    "that the verified model cannot be replaced"
                )
    return problems


# --- hardening ---------------------------------------------------------------------------------------


_LIST_LABELS = {
    "initContainers": "init container",
    "containers": "container",
    "ephemeralContainers": "ephemeral container",
}


def check_kubelet_host_paths(spec: Mapping[str, Any], subject: Subject) -> list[Violation]:
    """No pod, claiming a model or not, may mount the kubelet's pod directories (or a parent of them)
    from the node: every pod's Secret volumes, a model's key among them, are mounted there."""
    return [
        Violation(
            INSECURE_POD,
            f"{subject} mounts hostPath {path or '(no path)'} as volume {volume}, which shows the "
            f"kubelet's pod directories ({KUBELET_ROOT}) where the Secret volumes of every pod on the "
            "node are mounted: no pod may do that in a namespace a ModelTrustPolicy covers; remove the volume",
        )
        for volume, path in kubelet_host_paths(spec)
    ]


def check_pod_security(spec: Mapping[str, Any], subject: Subject) -> list[Violation]:
    """Pod Security Standard `restricted` and more, on every container including init and ephemeral ones:
    non-root, not privileged, no privilege escalation, all capabilities dropped and none added,
    read-only root filesystem, seccomp RuntimeDefault or Localhost; no host namespaces or hostPath
    (one that shows the kubelet's pod directories is named apart: `check_kubelet_host_paths`)."""
    violations = check_kubelet_host_paths(spec, subject)
    kubelet_volumes = {volume for volume, _ in kubelet_host_paths(spec)}
    pod_context = sub(spec, "securityContext")
    pod_problems = [
        f"{field}: true shares the node's namespace"
        for field in ("hostNetwork", "hostPID", "hostIPC")
        if spec.get(field) is True
    ]
    pod_problems += [
        f"volume {volume['name']} is a hostPath (the node's files)"
        for volume in items(spec, "volumes")
        if "hostPath" in volume and volume["name"] not in kubelet_volumes
    ]
    if pod_problems:
        violations.append(
            Violation(
                INSECURE_POD,
                f"{subject} is not isolated from the node: {'; '.join(pod_problems)}; remove them",
            )
        )
    for list_name, container in containers(spec):
        problems = container_security_problems(sub(container, "securityContext"), pod_context)
        if problems:
            violations.append(
                Violation(
                    INSECURE_POD,
                    f"{_LIST_LABELS[list_name]} {container['name']} of {subject} is not hardened: "
                    f"{'; '.join(problems)}",
                )
            )
    return violations


def container_security_problems(context: Mapping[str, Any], pod_context: Mapping[str, Any]) -> list[str]:
    """What a container's securityContext (with the pod's as fallback) lacks; each says what to set."""
    problems: list[str] = []

    def effective(key: str) -> Any:
        value = context.get(key)
        return pod_context.get(key) if value is None else value

    if effective("runAsNonRoot") is not True:
        problems.append("set runAsNonRoot: true")
    if effective("runAsUser") == 0:
        problems.append("runAsUser is 0 (root): use an unprivileged user")
    if context.get("privileged") is True:
        problems.append("privileged: true gives it the node: remove it")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("set allowPrivilegeEscalation: false")
    capabilities = sub(context, "capabilities")
    if "ALL" not in (capabilities.get("drop") or ()):
        problems.append("set capabilities.drop: [ALL]")
    if capabilities.get("add"):
        problems.append(f"capabilities.add {list(capabilities['add'])} must be empty")
    if context.get("readOnlyRootFilesystem") is not True:
        problems.append("set readOnlyRootFilesystem: true")
    seccomp = sub(context, "seccompProfile").get("type") or sub(pod_context, "seccompProfile").get("type")
    if seccomp not in SECCOMP_TYPES:
        problems.append("set seccompProfile.type: RuntimeDefault (or Localhost)")
    if context.get("procMount") not in (None, "Default"):
        problems.append("procMount must be Default")
    return problems


# --- bypass ------------------------------------------------------------------------------------------


def mentions_uri(text: str, uri: str) -> bool:
    """Whether `text` contains `uri` as a whole (not as the start of a longer path: s3://b/m2 is not s3://b/m)."""
    start = text.find(uri)
    while start != -1:
        end = start + len(uri)
        if end == len(text) or not URI_CONTINUES.match(text[end]):
            return True
        start = text.find(uri, start + 1)
    return False


def check_bypass(
    spec: Mapping[str, Any],
    subject: Subject,
    models: NamespaceIndex | Iterable[WatchedModel],
    running: WatchedModel | None,
) -> list[Violation]:
    """A pod must not get at a model's Secrets or artifact other than through that model's loader.

    - the key Secret, TLS Secret or client certificate Secrets of a model it does not run (named in
      `samd.dev/model`), by volume (also projected or handed to a volume plugin), env or envFrom;
    - the artifact URI of a model it does not run, in a container's command, args or env;
    - the key Secret of the model it runs, in any container but the loader.
    Secrets and artifacts shared with the model it runs count as that model's.

    `models` are the namespace's models, best as the state's `NamespaceIndex` of them (kept between
    requests; otherwise it is built here).
    """
    index = models if isinstance(models, NamespaceIndex) else NamespaceIndex.build(models)
    violations: list[Violation] = []
    for reference in secret_references(spec):
        if running is not None and running.protected_secret_role(reference.secret) is not None:
            role = running.protected_secret_role(reference.secret)
            if role == "key Secret" and reference.container not in (None, FETCH_CONTAINER):
                violations.append(
                    Violation(
                        KEY_EXPOSED,
                        f"container {reference.container} of {subject} gets the key Secret {reference.secret} "
                        f"of SecureModel {running.name} ({reference.how}): only the loader {FETCH_CONTAINER} "
                        "may read the model key",
                    )
                )
            continue
        if not index.may_protect(reference.secret):
            continue
        for model in index.models:
            role = model.protected_secret_role(reference.secret)
            if role is None:
                continue
            violations.append(
                Violation(
                    BYPASS_ATTEMPT,
                    f"{subject} uses Secret {reference.secret} ({reference.how}), the {role} of SecureModel "
                    f"{model.name}, {_without(running, model)}: models are only loaded by their verifying loader; "
                    "remove the reference",
                )
            )
            break
    if index.uri_pattern is None:
        return violations
    for _, container in containers(spec):
        mentioned = index.mentioned_uris(mentioned_strings(container))
        if not mentioned:
            continue
        for model in index.models:
            uri = model.artifact_uri
            if uri not in mentioned:
                continue
            if running is not None and (model is running or uri == running.artifact_uri):
                continue
            violations.append(
                Violation(
                    BYPASS_ATTEMPT,
                    f"container {container['name']} of {subject} is given the artifact {uri} of SecureModel "
                    f"{model.name} {_without(running, model)}: models are only loaded by their verifying "
                    "loader; remove it",
                )
            )
    return violations


def _without(running: WatchedModel | None, model: WatchedModel) -> str:
    if running is None:
        return f"without running it (annotation {MODEL_ANNOTATION}: {model.name} and its loader)"
    return f"while it runs SecureModel {running.name}"


# --- the decider ---------------------------------------------------------------------------------------


def _same_template(kind: str, new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether an update leaves the pod (template) spec, SAMD's annotations and the model label as they were."""
    if old is None:
        return False
    try:
        before, after = pod_template(kind, old), pod_template(kind, new)
    except MalformedWorkloadError:
        return False

    def samd_metadata(template: PodTemplate) -> tuple[dict[str, str], str | None]:
        annotations = {
            k: v for k, v in pod_annotations(template.metadata).items() if k.startswith("samd.dev/")
        }
        return annotations, pod_labels(template.metadata).get(MODEL_LABEL)

    return before.spec == after.spec and samd_metadata(before) == samd_metadata(after)


def pod_labels(metadata: Mapping[str, Any]) -> Mapping[str, str]:
    value = metadata.get("labels")
    return value if isinstance(value, dict) else {}


def check_identity(
    template: PodTemplate, subject: Subject, models: Iterable[WatchedModel], running: WatchedModel | None
) -> list[Violation]:
    """Only a model's own pods carry its selector label (its Service would send them the model's
    traffic, its NetworkPolicy would let its clients in) or run as its ServiceAccount."""
    violations: list[Violation] = []
    label = pod_labels(template.metadata).get(MODEL_LABEL)
    if label is not None and (running is None or label != model_label_value(running.name)):
        violations.append(
            Violation(
                BYPASS_ATTEMPT,
                f"{subject} carries the label {MODEL_LABEL}={label}, which selects a SecureModel's pods (its "
                "Service sends them the model's traffic and its NetworkPolicy lets the model's clients in): only "
                "the operator's pods of that model carry it; remove the label",
            )
        )
    account = template.spec.get("serviceAccountName") or template.spec.get("serviceAccount")
    if isinstance(account, str):
        for model in models:
            if account == workload_service_account_name(model.name) and model is not running:
                violations.append(
                    Violation(
                        BYPASS_ATTEMPT,
                        f"{subject} runs as ServiceAccount {account}, the identity of SecureModel {model.name}: "
                        "only the operator's pods of that model run as it; use a ServiceAccount of your own",
                    )
                )
    return violations


def check_pod_shape(subject: Subject, model: WatchedModel, problems: Sequence[str] | None) -> list[Violation]:
    """Violations for how the pod differs from the one the operator builds for the model
    (`samd.webhook.podshape.compare_pod`); `problems` None: the operator builds no pod for it."""
    if problems is None:
        return [
            Violation(
                POD_ALTERED,
                f"SecureModel {model.name} is not served (spec.serving.enabled is false), so the operator builds "
                f"no pod for it and {subject} may not load it; enable serving in the SecureModel instead",
            )
        ]
    if not problems:
        return []
    return [
        Violation(
            POD_ALTERED,
            f"{subject} is not the pod the operator builds for SecureModel {model.name}: {'; '.join(problems)}; "
            "deploy the model through its SecureModel (the operator keeps its Deployment) instead of a pod of "
            "your own",
        )
    ]


@dataclass
class _KeptPod:
    """The operator's loader and pod for one model object and digest (one build of its Deployment),
    and the answers already given for pod specs (a ReplicaSet's pods share one spec, so most pods are
    answered by one serialisation and a lookup)."""

    model: WatchedModel
    digest: str
    loader: ExpectedLoader
    expected: ExpectedPod | None
    answers: dict[bytes, tuple[str, ...]] = field(default_factory=dict)


MAX_KEPT_ANSWERS = 16
"""Distinct pod specs remembered per model."""


ADMITTED_TTL = 30.0
"""Seconds an admission of a pod spec is reused at most (well inside the verification cache's TTL)."""
MAX_KEPT_ADMISSIONS = 4096
"""At most this many admitted pod specs are kept (and never more than the verification cache keeps
verifications, which the admissions rest on)."""


def admission_key(namespace: str, kind: str, obj: Mapping[str, Any] | None) -> bytes | None:
    """What an admission of a pod (template) depends on in the request: the namespace, the kind, and
    the template's spec, annotations and labels, serialised exactly (None when not readable as such)."""
    node: object = obj
    for part in TEMPLATE_PATHS.get(kind, ()):
        node = node.get(part) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        return None
    metadata = node.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    content = [namespace, kind, node.get("spec"), metadata.get("annotations"), metadata.get("labels")]
    try:
        return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None


def _parsed_spec(obj: Mapping[str, Any] | None) -> SecureModelSpec | None:
    raw = (obj or {}).get("spec")
    if not isinstance(raw, Mapping):
        return None
    try:
        return parse_secure_model(raw)
    except SamdError:
        return None


class PolicyDecider:
    """The production `Decider`: the rules above over the watched state and the verification cache."""

    def __init__(
        self,
        state: WatchedState,
        cache: VerificationCache[VerificationResult],
        config: DecisionConfig | None = None,
        *,
        access: AccessReviewer | None = None,
    ) -> None:
        self.state = state
        self.cache = cache
        self.config = config or DecisionConfig()
        self.access = access
        """Asks the API server what a SecureModel's author may do; None: every such question is refused."""
        self._pods: dict[tuple[str, str], _KeptPod] = {}
        self._admitted: dict[bytes, tuple[int, float, Decision]] = {}
        """Pod (template) admissions by exact content, valid for the state revision they were made at."""
        state.add_policy_listener(self._policy_changed)

    @property
    def ready(self) -> bool:
        return self.state.ready

    def _kept(self, model: WatchedModel, digest: str) -> _KeptPod:
        """The operator's loader and pod for `model`, kept while the model object (replaced on every
        change of the SecureModel) and the digest stay the same."""
        key = (model.namespace, model.name)
        kept = self._pods.get(key)
        if kept is None or kept.model is not model or kept.digest != digest:
            config = self.config
            loader, expected = expected_for(
                model, digest, config.builder_settings, config.allowed_loader_images
            )
            if len(self._pods) >= MAX_KEPT_LOADERS:
                self._pods.clear()
            kept = self._pods[key] = _KeptPod(model, digest, loader, expected)
        return kept

    def _pod_problems(
        self, spec: Mapping[str, Any], model: WatchedModel, digest: str
    ) -> tuple[str, ...] | None:
        """How `spec` differs from the operator's pod for `model` (None: it builds none), kept per model
        object, digest and exact pod spec."""
        kept = self._kept(model, digest)
        if kept.expected is None:
            return None
        serialised = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)
        answer = kept.answers.get(serialised)
        if answer is None:
            answer = tuple(compare_pod(spec, kept.expected))
            if len(kept.answers) >= MAX_KEPT_ANSWERS:
                kept.answers.clear()
            kept.answers[serialised] = answer
        return answer

    def _policy_changed(self, name: str) -> None:
        self.cache.invalidate_policy(name)

    async def decide(self, request: AdmissionRequest) -> Decision:
        kind = request.kind.kind
        if (
            _GROUPS.get(kind) != request.kind.group
            or request.operation not in _CHECKED_OPERATIONS
            or request.sub_resource not in (_POD_SUBRESOURCES if kind == "Pod" else ("",))
        ):
            return Decision(
                allowed=True,
                message=f"SAMD does not check {request.operation} of {request.kind}"
                + (f"/{request.sub_resource}" if request.sub_resource else ""),
                reason=NOT_APPLICABLE,
            )
        if kind == "Namespace":
            return self._decide_namespace(request)
        cover = coverage(self.state, request.namespace)
        obj = request.object
        if kind == SECURE_MODEL_KIND:
            return await self._decide_secure_model(request, obj, cover)
        if not cover.covered:
            return Decision(
                allowed=True,
                message=f"no ModelTrustPolicy covers namespace {request.namespace}",
                reason=NOT_COVERED,
            )
        return await self._decide_workload(request, kind, obj, cover)

    def _decide_namespace(self, request: AdmissionRequest) -> Decision:
        """Coverage cannot be removed from below: a namespace holding SecureModels may not be
        relabelled out of a policy that covers it, and a protected namespace keeps its
        `PROTECTED_NAMESPACE_LABEL` (which sends its pods here) while it holds SecureModels or a
        policy selects it."""
        name = request.name or str(sub(request.object or {}, "metadata").get("name") or "")
        if request.operation != "UPDATE" or request.old_object is None:
            return Decision(
                True, f"SAMD does not check {request.operation} of namespace {name}", NOT_APPLICABLE
            )
        models = sorted(model.name for model in self.state.models_in(name))
        old_labels = pod_labels(sub(request.old_object, "metadata"))
        new_labels = pod_labels(sub(request.object or {}, "metadata"))
        if models:
            lost = sorted(
                covering_policy_names(self.state, old_labels) - covering_policy_names(self.state, new_labels)
            )
            if lost:
                return Decision(
                    allowed=False,
                    message=f"namespace {name} holds SecureModels ({', '.join(models)}) that ModelTrustPolicy "
                    f"{', '.join(lost)} covers through the namespace's labels; this change would take them out "
                    "of its coverage: delete or move the SecureModels first, or have a cluster admin change the "
                    "policy's namespaceSelector",
                    reason=COVERAGE_REMOVED,
                    policy=",".join(lost),
                )
        protected_before = old_labels.get(PROTECTED_NAMESPACE_LABEL) == PROTECTED_NAMESPACE_VALUE
        protected_after = new_labels.get(PROTECTED_NAMESPACE_LABEL) == PROTECTED_NAMESPACE_VALUE
        if protected_before and not protected_after:
            selecting = sorted(covering_policy_names(self.state, new_labels))
            if models or selecting:
                why = (
                    f"it holds SecureModels ({', '.join(models)})"
                    if models
                    else f"ModelTrustPolicy {', '.join(selecting)} selects it"
                )
                return Decision(
                    allowed=False,
                    message=f"namespace {name} is protected by SAMD because {why}: its label "
                    f"{PROTECTED_NAMESPACE_LABEL}={PROTECTED_NAMESPACE_VALUE} sends its pods to the admission "
                    "webhook and may not be removed or changed while it is; the operator removes it itself "
                    "once the namespace holds no SecureModel and no policy selects it",
                    reason=COVERAGE_REMOVED,
                    policy=",".join(selecting) or None,
                )
        if not models and not protected_before:
            return Decision(True, f"namespace {name} holds no SecureModel", NOT_APPLICABLE)
        return Decision(True, f"namespace {name} stays covered by its ModelTrustPolicies", UNCHANGED)

    async def _decide_secure_model(
        self, request: AdmissionRequest, obj: Mapping[str, Any] | None, cover: Coverage
    ) -> Decision:
        model = f"{request.namespace}/{request.object_name}"
        if not isinstance(obj, Mapping):
            violations = [Violation(MALFORMED, "the request carries no SecureModel object")]
        elif (
            request.operation == "UPDATE"
            and request.old_object is not None
            and (request.old_object.get("spec") == obj.get("spec"))
        ):
            # Metadata, finalizers and status do not change what is loaded; never block them
            # (deleting a model whose policy has since tightened must still finish).
            return Decision(True, "the SecureModel's spec is unchanged", UNCHANGED, model=model)
        else:
            old = request.old_object if request.operation == "UPDATE" else None
            violations = check_secure_model(obj, old, cover)
            spec = _parsed_spec(obj)
            if spec is not None:
                violations += await self._permission_violations(request, spec, _parsed_spec(old))
        return conclude(
            violations,
            cover,
            model=model,
            allowed_reason=SPEC_ACCEPTED,
            allowed_message="the SecureModel obeys every ModelTrustPolicy covering its namespace",
        )

    async def _permission_violations(
        self, request: AdmissionRequest, spec: SecureModelSpec, old: SecureModelSpec | None
    ) -> list[Violation]:
        """What the SecureModel asks the operator to do that its author could not do (never warn-only:
        charged to no policy, so it always denies)."""
        requirements = required_permissions(request.namespace, request.object_name, spec, old)
        if not requirements:
            return []
        if self.access is None:
            problems = [
                f"{requirement.field}, and this webhook has no API access to check that the requester may use "
                "it; SAMD refuses until it can"
                for requirement in requirements
            ]
        else:
            problems = await self.access.unmet(request.user_info, requirements)
        return [Violation(NOT_PERMITTED, problem, frozenset()) for problem in problems]

    async def _decide_workload(
        self, request: AdmissionRequest, kind: str, obj: Mapping[str, Any] | None, cover: Coverage
    ) -> Decision:
        # A ReplicaSet's pods are one pod spec many times: once admitted, the same content in the same
        # namespace is admitted again without the checks until anything the webhook watches changes
        # (or ADMITTED_TTL passes, so that verifications are still renewed as the cache's TTL asks).
        key = admission_key(request.namespace, kind, obj)
        now = time.monotonic()
        if key is not None:
            kept = self._admitted.get(key)
            if kept is not None and kept[0] == self.state.revision and now - kept[1] < ADMITTED_TTL:
                return kept[2]
        decision = await self._check_workload(request, kind, obj, cover)
        if (
            key is not None
            and decision.allowed
            and not decision.warnings
            and decision.reason in (VERIFIED, NO_MODEL)
        ):
            if len(self._admitted) >= min(self.cache.max_entries, MAX_KEPT_ADMISSIONS):
                self._admitted.clear()
            self._admitted[key] = (self.state.revision, now, decision)
        return decision

    async def _check_workload(
        self, request: AdmissionRequest, kind: str, obj: Mapping[str, Any] | None, cover: Coverage
    ) -> Decision:
        subject = Subject(kind)
        try:
            template = pod_template(kind, obj)
        except MalformedWorkloadError as error:
            return conclude(
                [Violation(MALFORMED, f"{subject} cannot be checked: {error}")],
                cover,
                model=None,
                allowed_reason=NO_MODEL,
                allowed_message="",
            )
        if request.operation == "UPDATE" and _same_template(kind, obj or {}, request.old_object):
            return Decision(True, f"the pod spec of this {kind} is unchanged", UNCHANGED)
        namespace = request.namespace
        name = referenced_model(template)
        index = self.state.namespace_index(namespace)
        if name is None:
            violations = check_kubelet_host_paths(template.spec, subject)
            violations += check_bypass(template.spec, subject, index, None)
            violations += check_identity(template, subject, index.models, None)
            return conclude(
                violations,
                cover,
                model=None,
                allowed_reason=NO_MODEL,
                allowed_message=f"{subject} runs no SecureModel and uses none of their Secrets or artifacts",
            )
        model = self.state.model(namespace, name)
        violations = invalid_policy_violations(cover)
        shape: list[Violation] = []
        if model is not None and model.quarantine is not None and kind == "Pod":
            # Whatever the policies' mode: a quarantine is a person's (or the incident response's) decision.
            violations.append(
                Violation(
                    QUARANTINED,
                    f"SecureModel {name} is quarantined ({model.quarantine}): its pods are refused until a "
                    f"person allowed to write securemodels/status clears it (samd quarantine clear {name} "
                    f"--namespace {namespace})",
                    frozenset(),
                )
            )
        if model is None:
            violations.append(
                Violation(
                    MODEL_NOT_FOUND,
                    f"{subject} references SecureModel {name!r} which does not exist in namespace {namespace}: "
                    f"create the SecureModel first, or fix the {MODEL_ANNOTATION} annotation",
                )
            )
        elif model.spec is None:
            violations.append(
                Violation(
                    INVALID_MODEL,
                    f"SecureModel {name} cannot be used ({model.problem}): fix its spec first",
                )
            )
        elif not cover.policies and not cover.invalid:
            violations.append(
                Violation(
                    NO_TRUST_POLICY,
                    f"no ModelTrustPolicy covers namespace {namespace}, so nothing says whose signature SecureModel "
                    f"{name} must carry: {subject} is refused until a cluster admin covers the namespace",
                )
            )
        else:
            signature = self.state.signature_of(model)
            problem = signature_problem(model, signature)
            if problem is not None:
                violations.append(problem)
                violations += check_loader(template, subject, model, None, self.config)
            else:
                assert signature is not None  # noqa: S101 - signature_problem said it is usable
                verifications = await self.verify(signature, cover.policies)
                digest = verified_digest(verifications)
                violations += check_model_pod(
                    template,
                    subject,
                    model,
                    verifications=verifications,
                    cover=cover,
                    config=self.config,
                    expected=self._kept(model, digest).loader if digest else None,
                )
                if digest is not None:
                    shape = check_pod_shape(subject, model, self._pod_problems(template.spec, model, digest))
        violations += check_pod_security(template.spec, subject)
        violations += check_bypass(template.spec, subject, index, model)
        violations += check_identity(template, subject, index.models, model)
        violations += shape  # last: the rules above name the more specific reason for what differs
        return conclude(
            violations,
            cover,
            model=f"{namespace}/{name}",
            allowed_reason=VERIFIED,
            allowed_message=f"SecureModel {name}'s signature verifies under "
            f"{', '.join(p.name for p in cover.policies)} and {subject} is the operator's pod for it, unaltered",
        )

    async def verify(
        self, signature: SignatureBundle, policies: Sequence[TrustPolicy]
    ) -> dict[str, VerificationResult | VerificationError]:
        """The bundle verified under each policy through the cache (one verification per bundle and
        policy generation, however many pods ask at once)."""
        bundle = signature.bundle
        assert bundle is not None  # noqa: S101
        outcomes: dict[str, VerificationResult | VerificationError] = {}
        for policy in policies:
            key = VerificationKey(signature.sha256, policy.name, policy.generation)
            try:
                outcomes[policy.name] = await self.cache.get_or_compute(key, _verifier(bundle, policy))
            except VerificationError as error:
                outcomes[policy.name] = error
        return outcomes


def _verifier(bundle: bytes, policy: TrustPolicy) -> Callable[[], VerificationResult]:
    def verify() -> VerificationResult:
        return verify_under_policies(bundle, [policy])[0]

    return verify
