"""The whole model pod: a pod that claims a model must be the pod the operator builds for it.

The verifying loader makes the served bytes the signed ones, but anything else in the pod could
still take them or change what answers: another server image, a sidecar that mounts the model or
TLS volume, a second init container that writes its own model into the server's directory, an
exec probe or lifecycle hook that runs a command inside the server, a service-account token. So
the pod (or pod template) is compared with the pod spec the operator's own builder
(`build_deployment`) makes for the model's current spec and verified digest, field by field:

- every field the operator sets must have the operator's value; every field it does not set must
  be absent, except the fields in IGNORED_* below, which decide only where and how long a pod runs,
  not what it runs or can read (scheduling, resources, pull policy, termination message, DNS);
- values the API server fills in by default (a ConfigMap volume's defaultMode, a port's protocol,
  a probe's timings) are accepted when they are the defaults;
- ephemeral (debug) containers may be added, but may not mount any of the pod's volumes nor join a
  container's process namespace (``targetContainerName``), from which the model in memory could be
  read through /proc;
- the loader's command, environment, mounts and image are compared by `check_loader` (it accepts
  the operator's flags in any order and the configured loader images), so they are skipped here.

The expected pod is built once per model object and digest, in the same build of the operator's
Deployment as the expected loader, and kept (`ExpectedPod`, `samd.webhook.decide.expected_for`):
the admission path only walks the two specs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from samd.operator.builders.context import BuilderSettings
from samd.operator.builders.serving import FETCH_CONTAINER

IGNORED_POD_FIELDS = frozenset(
    {
        "activeDeadlineSeconds",
        "affinity",
        "dnsConfig",
        "dnsPolicy",
        "hostAliases",  # the loader checks the bytes it fetched, wherever a name points
        "hostname",
        "hostUsers",
        "imagePullSecrets",  # checked by the bypass rule like every Secret reference
        "nodeName",
        "nodeSelector",
        "os",
        "overhead",
        "preemptionPolicy",
        "priority",
        "priorityClassName",
        "readinessGates",
        "resources",
        "restartPolicy",
        "schedulerName",
        "schedulingGates",
        "setHostnameAsFQDN",
        "subdomain",
        "terminationGracePeriodSeconds",
        "tolerations",
        "topologySpreadConstraints",
    }
)
"""Pod fields that place and time the pod but do not change what it runs or can read."""

IGNORED_CONTAINER_FIELDS = frozenset(
    {
        "imagePullPolicy",
        "resizePolicy",
        "resources",
        "stdin",
        "stdinOnce",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "tty",
    }
)
"""Container fields that do not change what the container runs or can read."""

LOADER_FIELDS = frozenset({"image", "command", "args", "env", "envFrom", "volumeMounts", "volumeDevices"})
"""The loader's fields `check_loader` compares (order-insensitive flags, allowed images)."""

# Values the API server writes when a field is left out; an actual value equal to one of these
# where the operator set nothing is the same pod.
_DEFAULTS: Mapping[str, object] = {
    "defaultMode": 420,
    "protocol": "TCP",
    "timeoutSeconds": 1,
    "periodSeconds": 10,
    "successThreshold": 1,
    "failureThreshold": 3,
}
_HOST_SHARING = ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace")


@dataclass(frozen=True)
class ExpectedPod:
    """The pod spec the operator builds for one model object and verified digest."""

    spec: Mapping[str, Any]
    server_images: Mapping[str, frozenset[str]]
    """Container name -> images it may run (SAMD's own image may be any configured SAMD image)."""

    @classmethod
    def of_pod(
        cls, pod: Mapping[str, Any], settings: BuilderSettings, samd_images: Collection[str]
    ) -> ExpectedPod:
        """From the pod spec of a Deployment the operator's builder made with `settings`."""
        images: dict[str, frozenset[str]] = {}
        for container in pod.get("containers", []):
            image = container["image"]
            images[container["name"]] = (
                frozenset({image, *samd_images}) if image == settings.default_image else frozenset({image})
            )
        return cls(spec=pod, server_images=images)


def compare_pod(actual: Mapping[str, Any], expected: ExpectedPod) -> list[str]:
    """How the pod spec `actual` differs from the operator's (empty when it is the operator's pod)."""
    want = expected.spec
    problems: list[str] = []
    for key in sorted(actual.keys() | want.keys()):
        if key in IGNORED_POD_FIELDS or key in (
            "initContainers",
            "containers",
            "ephemeralContainers",
            "volumes",
        ):
            continue
        if key in _HOST_SHARING:
            if actual.get(key) not in (None, False):
                problems.append(f"{key} is set, the operator never sets it")
            continue
        if key == "serviceAccount" and actual.get(key) in (None, want.get("serviceAccountName")):
            continue
        problems += _differences(key, actual.get(key), want.get(key))
    problems += _compare_volumes(_named(actual.get("volumes")), _named(want.get("volumes")))
    for list_name in ("initContainers", "containers"):
        problems += _compare_containers(
            list_name, actual.get(list_name) or [], want.get(list_name) or [], expected
        )
    for container in actual.get("ephemeralContainers") or []:
        name = container.get("name")
        if container.get("volumeMounts") or container.get("volumeDevices"):
            problems.append(
                f"ephemeral container {name} mounts the pod's volumes (the model, TLS or key files)"
            )
        if container.get("targetContainerName"):
            problems.append(
                f"ephemeral container {name} joins container {container['targetContainerName']}'s processes "
                "(targetContainerName), from which the model in memory can be read"
            )
    return problems


def _named(value: object) -> dict[str, Mapping[str, Any]]:
    return {item["name"]: item for item in value or [] if isinstance(item, Mapping)}  # type: ignore[attr-defined]


def _compare_volumes(
    actual: Mapping[str, Mapping[str, Any]], want: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    problems = [f"volume {name} is not one the operator adds" for name in sorted(actual.keys() - want.keys())]
    problems += [f"volume {name} is missing" for name in sorted(want.keys() - actual.keys())]
    for name in sorted(actual.keys() & want.keys()):
        problems += _differences(f"volume {name}", actual[name], want[name])
    return problems


def _compare_containers(
    list_name: str,
    actual: Sequence[Mapping[str, Any]],
    want: Sequence[Mapping[str, Any]],
    expected: ExpectedPod,
) -> list[str]:
    label = "init container" if list_name == "initContainers" else "container"
    actual_names = [c.get("name") for c in actual]
    want_names = [c["name"] for c in want]
    if actual_names != want_names:
        return [f"its {label}s are {actual_names or 'none'}, the operator's are {want_names or 'none'}"]
    problems: list[str] = []
    for have, should in zip(actual, want, strict=True):
        name = should["name"]
        skipped = LOADER_FIELDS if list_name == "initContainers" and name == FETCH_CONTAINER else frozenset()
        for key in sorted(have.keys() | should.keys()):
            if key in IGNORED_CONTAINER_FIELDS or key in skipped:
                continue
            if key == "image" and name in expected.server_images:
                if have.get("image") not in expected.server_images[name]:
                    allowed = ", ".join(sorted(expected.server_images[name]))
                    problems.append(f"{label} {name} runs image {have.get('image')!r}, not {allowed}")
                continue
            problems += _differences(f"{label} {name} {key}", have.get(key), should.get(key))
    return problems


def _differences(where: str, have: object, want: object) -> list[str]:
    """How `have` differs from `want`, accepting API-server defaults where `want` leaves a field out."""
    if _same(have, want):
        return []
    if want is None:
        return [f"{where} is set, the operator never sets it"]
    if have is None:
        return [f"{where} is missing (the operator sets {_short(want)})"]
    return [f"{where} is {_short(have)}, the operator sets {_short(want)}"]


def _same(have: object, want: object) -> bool:
    if isinstance(have, Mapping) and isinstance(want, Mapping):
        for key in have.keys() | want.keys():
            if key not in want:
                if key in _DEFAULTS and have[key] == _DEFAULTS[key]:
                    continue
                return False
            if not _same(have.get(key), want[key]):
                return False
        return True
    if isinstance(have, list) and isinstance(want, list):
        if len(have) != len(want):
            return False
        if all(isinstance(item, Mapping) and "mountPath" in item for item in (*have, *want)):
            by_path = {item["mountPath"]: item for item in want}
            return all(_same(item, by_path.get(item["mountPath"])) for item in have)
        return all(_same(a, b) for a, b in zip(have, want, strict=True))
    return have == want


def _short(value: object, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
