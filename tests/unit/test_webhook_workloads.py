"""Pod templates of every workload kind, read strictly, and the Secrets a pod can get at."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from samd.webhook.workloads import (
    SECRET_NAME_PATHS,
    WORKLOAD_KINDS,
    MalformedWorkloadError,
    SecretReference,
    kubelet_host_paths,
    path_parts,
    pod_template,
    reaches_kubelet_root,
    secret_references,
    template_path,
)
from tests.support.secret_references import SECRET, Example, examples

pytestmark = pytest.mark.unit

POD_METADATA = {"labels": {"app": "fraud"}, "annotations": {"samd.dev/model": "fraud"}}
POD_SPEC = {
    "initContainers": [{"name": "samd-fetch", "image": "samd:0.1.0", "command": ["samd", "fetch"]}],
    "containers": [{"name": "server", "image": "samd:0.1.0", "args": ["serve"]}],
}


def wrap(kind: str, template: Any) -> dict[str, Any]:
    """An object of `kind` holding `template` where that kind keeps its pod template."""
    if kind == "Pod":
        assert isinstance(template, dict)
        return {"apiVersion": "v1", "kind": "Pod", **template}
    if kind == "CronJob":
        return {
            "kind": kind,
            "spec": {"schedule": "@hourly", "jobTemplate": {"spec": {"template": template}}},
        }
    return {"kind": kind, "spec": {"replicas": 2, "template": template}}


@pytest.mark.parametrize("kind", sorted(WORKLOAD_KINDS))
def test_each_kind_gives_its_pod_templates_metadata_and_spec(kind: str) -> None:
    metadata, spec = pod_template(kind, wrap(kind, {"metadata": POD_METADATA, "spec": POD_SPEC}))

    assert metadata == POD_METADATA
    assert spec == POD_SPEC


def test_the_template_paths_are_those_of_the_kubernetes_api() -> None:
    assert template_path("Deployment") == "spec.template"
    assert template_path("Job") == "spec.template"
    assert template_path("CronJob") == "spec.jobTemplate.spec.template"
    assert template_path("Pod") == "(the Pod)"


def test_a_template_without_metadata_has_empty_metadata() -> None:
    metadata, _ = pod_template("Deployment", wrap("Deployment", {"spec": POD_SPEC}))

    assert metadata == {}


def test_a_kind_without_a_pod_template_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        pod_template("Service", {"spec": {}})


def _with(path: list[str | int], value: Any) -> dict[str, Any]:
    """The pod spec with the field at `path` set to `value`."""
    spec: Any = copy.deepcopy(POD_SPEC)
    node = spec
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert isinstance(spec, dict)
    return spec


@pytest.mark.parametrize(
    ("kind", "obj", "message"),
    [
        ("Pod", ["not", "an", "object"], "the Pod must be an object, not a list"),
        ("Pod", {"metadata": {}}, "Pod spec must be an object, not null"),
        ("Deployment", {"spec": {"replicas": 1}}, "Deployment spec.template must be an object, not null"),
        ("Deployment", {"spec": "template"}, "Deployment spec must be an object, not a string"),
        ("CronJob", {"spec": {"jobTemplate": []}}, "CronJob spec.jobTemplate must be an object, not a list"),
        (
            "Job",
            wrap("Job", {"spec": POD_SPEC, "metadata": "x"}),
            "Job spec.template.metadata must be an object",
        ),
        (
            "Job",
            wrap("Job", {"metadata": {"annotations": {"samd.dev/model": 7}}, "spec": POD_SPEC}),
            "Job spec.template.metadata.annotations['samd.dev/model'] must be a string, not a number",
        ),
        (
            "StatefulSet",
            wrap("StatefulSet", {"spec": _with(["containers"], {})}),
            "spec.template.spec.containers must be a list",
        ),
        (
            "DaemonSet",
            wrap("DaemonSet", {"spec": _with(["containers"], [])}),
            "spec.template.spec.containers must list at least one",
        ),
        (
            "ReplicaSet",
            wrap("ReplicaSet", {"spec": _with(["containers", 0, "name"], None)}),
            "containers[0].name must be a string, not null",
        ),
        (
            "Pod",
            {"spec": _with(["initContainers", 0, "command"], "samd fetch")},
            "Pod spec.initContainers[0].command must be a list of strings",
        ),
        (
            "Pod",
            {"spec": _with(["containers", 0, "args"], ["serve", 8443])},
            "Pod spec.containers[0].args[1] must be a string, not a number",
        ),
        (
            "Pod",
            {"spec": _with(["containers", 0, "securityContext"], {"privileged": "false"})},
            "Pod spec.containers[0].securityContext.privileged must be a boolean, not a string",
        ),
        (
            "Pod",
            {"spec": _with(["containers", 0, "securityContext"], {"runAsUser": True})},
            "securityContext.runAsUser must be a number, not a boolean",
        ),
        (
            "Pod",
            {"spec": _with(["containers", 0, "securityContext"], {"capabilities": {"drop": "ALL"}})},
            "securityContext.capabilities.drop must be a list of strings, not a string",
        ),
        (
            "Pod",
            {"spec": _with(["containers", 0, "env"], [{"name": "A", "value": 1}])},
            "containers[0].env[0].value must be a string",
        ),
        (
            "Pod",
            {"spec": _with(["containers", 0, "envFrom"], [{"secretRef": "keys"}])},
            "containers[0].envFrom[0].secretRef must be an object, not a string",
        ),
        (
            "Pod",
            {"spec": _with(["ephemeralContainers"], [{"image": "busybox"}])},
            "ephemeralContainers[0].name must be a string",
        ),
        (
            "Pod",
            {"spec": _with(["volumes"], [{"name": "k", "secret": {"secretName": 3}}])},
            "volumes[0].secret.secretName must be a string",
        ),
        (
            "Pod",
            {"spec": _with(["volumes"], [{"name": "h", "hostPath": "/"}])},
            "volumes[0].hostPath must be an object, not a string",
        ),
        (
            "Pod",
            {
                "spec": _with(
                    ["volumes"], [{"name": "p", "projected": {"sources": {"secret": {"name": "k"}}}}]
                )
            },
            "volumes[0].projected.sources must be a list, not an object",
        ),
        (
            "Pod",
            {"spec": _with(["volumes"], [{"name": "c", "csi": {"nodePublishSecretRef": "k"}}])},
            "volumes[0].csi.nodePublishSecretRef must be an object, not a string",
        ),
        (
            "Pod",
            {"spec": _with(["hostNetwork"], "yes")},
            "Pod spec.hostNetwork must be a boolean, not a string",
        ),
        (
            "Pod",
            {"spec": _with(["securityContext"], {"seccompProfile": {"type": 1}})},
            "Pod spec.securityContext.seccompProfile.type must be a string, not a number",
        ),
    ],
)
def test_a_malformed_object_is_refused_naming_the_field(kind: str, obj: Any, message: str) -> None:
    with pytest.raises(MalformedWorkloadError) as raised:
        pod_template(kind, obj)

    assert message in str(raised.value)


def test_every_way_of_getting_at_a_secret_is_found_with_who_sees_it() -> None:
    spec = {
        "initContainers": [
            {
                "name": "loader",
                "image": "x",
                "env": [
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "t"}}},
                    {"name": "PLAIN", "value": "not a secret"},
                    {"name": "CONFIG", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}},
                ],
                "volumeMounts": [{"name": "keys", "mountPath": "/keys"}],
            }
        ],
        "containers": [
            {
                "name": "app",
                "image": "x",
                "envFrom": [{"secretRef": {"name": "bulk"}}, {"configMapRef": {"name": "settings"}}],
                "volumeMounts": [{"name": "keys", "mountPath": "/k"}, {"name": "mixed", "mountPath": "/m"}],
            }
        ],
        "ephemeralContainers": [
            {"name": "debug", "image": "x", "envFrom": [{"secretRef": {"name": "debug-creds"}}]}
        ],
        "volumes": [
            {"name": "keys", "secret": {"secretName": "keyset"}},
            {
                "name": "mixed",
                "projected": {"sources": [{"configMap": {"name": "c"}}, {"secret": {"name": "tls"}}]},
            },
            {"name": "driver", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "csi-creds"}}},
            {"name": "share", "azureFile": {"secretName": "azure-creds", "shareName": "s"}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }

    references = secret_references(spec)

    assert sorted(references, key=lambda r: (r.secret, r.container or "")) == [
        SecretReference("azure-creds", None, "volume share"),
        SecretReference("bulk", "app", "envFrom"),
        SecretReference("csi-creds", None, "volume driver"),
        SecretReference("debug-creds", "debug", "envFrom"),
        SecretReference("keyset", "app", "volume keys"),
        SecretReference("keyset", "loader", "volume keys"),
        SecretReference("tls", "app", "volume mixed"),
        SecretReference("token", "loader", "env TOKEN"),
    ]


def test_every_path_of_the_table_has_an_example_and_the_table_has_no_duplicates() -> None:
    assert sorted(example.path for example in examples()) == sorted(SECRET_NAME_PATHS)
    assert len(set(SECRET_NAME_PATHS)) == len(SECRET_NAME_PATHS)


@pytest.mark.parametrize("example", examples(), ids=lambda example: example.path)
def test_each_way_of_naming_a_secret_is_reported_with_who_sees_it(example: Example) -> None:
    template = pod_template("Pod", {"spec": example.spec})

    assert secret_references(template.spec) == [SecretReference(SECRET, example.container, example.how)]


def _at(node: Any, parts: list[str]) -> Any:
    """The value at the path's parts (the last item of every list)."""
    for part in parts:
        node = node[-1] if part == "[]" else node[part]
    return node


@pytest.mark.parametrize("example", examples(), ids=lambda example: example.path)
def test_a_secret_name_of_the_wrong_type_is_refused_not_skipped(example: Example) -> None:
    spec = copy.deepcopy(example.spec)
    parts = path_parts(example.path)
    _at(spec, parts[:-1])[parts[-1]] = 7

    with pytest.raises(MalformedWorkloadError) as raised:
        pod_template("Pod", {"spec": spec})

    assert "must be a string, not a number" in str(raised.value)


def test_a_reference_without_a_name_and_other_volumes_are_not_secrets() -> None:
    spec = {
        "containers": [{"name": "app", "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": ""}}}]}],
        "imagePullSecrets": [{}],
        "volumes": [
            {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
            {"name": "c", "configMap": {"name": "settings"}},
            {"name": "s", "secret": {}},
        ],
    }

    assert secret_references(pod_template("Pod", {"spec": spec}).spec) == []


@pytest.mark.parametrize(
    ("path", "reaches"),
    [
        ("/var/lib/kubelet", True),
        ("/var/lib/kubelet/", True),
        ("/var/lib/kubelet/pods", True),
        ("/var/lib/kubelet/pods/0b4f/volumes/kubernetes.io~secret/keys", True),
        ("/", True),
        ("/var", True),
        ("/var/lib", True),
        ("//var//lib/./kubelet", True),
        ("/var/lib/other/../kubelet/pods", True),
        ("var/lib/kubelet", True),
        ("", True),
        ("/var/lib/kubelet-plugins", False),
        ("/var/log", False),
        ("/var/lib/containerd", False),
        ("/etc/ssl/certs", False),
        ("/data", False),
    ],
)
def test_host_paths_that_show_the_kubelets_pod_directories(path: str, reaches: bool) -> None:
    assert reaches_kubelet_root(path) is reaches


def test_kubelet_host_paths_names_the_volumes() -> None:
    spec = {
        "containers": [{"name": "app"}],
        "volumes": [
            {"name": "logs", "hostPath": {"path": "/var/log"}},
            {"name": "node", "hostPath": {"path": "/", "type": "Directory"}},
            {"name": "pods", "hostPath": {"path": "/var/lib/kubelet/pods"}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }

    assert kubelet_host_paths(pod_template("Pod", {"spec": spec}).spec) == [
        ("node", "/"),
        ("pods", "/var/lib/kubelet/pods"),
    ]
    assert kubelet_host_paths({"volumes": [{"name": "x", "hostPath": {}}]}) == [("x", "")]
    assert kubelet_host_paths(spec, root="/data/kubelet") == [("node", "/")]


def test_a_host_path_that_is_not_a_string_is_refused() -> None:
    spec = {"containers": [{"name": "app"}], "volumes": [{"name": "n", "hostPath": {"path": 1}}]}

    with pytest.raises(MalformedWorkloadError, match=r"spec.volumes\[0\].hostPath.path must be a string"):
        pod_template("Pod", {"spec": spec})
