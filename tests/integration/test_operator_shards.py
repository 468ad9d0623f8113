"""Two operator instances sharded by namespace label share one control plane (docs/scaling.md).

Shard a and shard b each reconcile only the SecureModels of namespaces their selector takes; a
namespace in no shard is left alone (its model gets no status, its namespace no protected label);
moving a namespace's label from a to b hands its model over to b.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from samd.operator.shard import parse_selector
from tests.support.cluster import Cluster, scratch_namespace
from tests.support.crds import install_crds
from tests.support.models import ModelArtifacts, make_model
from tests.support.operator import OPERATOR_NAMESPACE, SHARD_LABEL, OperatorProcess, running_operator
from tests.support.scenario import EXAMPLE, GROUP, VERSION, eventually

pytestmark = pytest.mark.integration

MODEL = "fraud-detection"  # the name and version the test artifact is signed as
PROTECTED = "samd.dev/protected"


def ready_models(operator: OperatorProcess) -> dict[str, float]:
    """namespace -> samd_operator_model_ready, from the instance's own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port()}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("samd_operator_model_ready{"):
            labels, value = line[len("samd_operator_model_ready{") :].rsplit("} ", 1)
            fields = dict(item.split("=", 1) for item in labels.split(","))
            found[fields["namespace"].strip('"')] = float(value)
    return found


def logged_events(operator: OperatorProcess, event: str) -> list[dict[str, Any]]:
    lines = operator.log_path.read_text(errors="replace").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [record for record in records if record.get("event") == event]


class Cluster3:
    """Three namespaces (shard a, shard b, no shard), each with the model and its key Secret."""

    def __init__(self, k8s: client.ApiClient, namespaces: dict[str, str], artifacts: ModelArtifacts) -> None:
        self.custom = client.CustomObjectsApi(k8s)
        self.core = client.CoreV1Api(k8s)
        self.namespaces = namespaces
        self.artifacts = artifacts

    def model(self, shard: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespaces[shard], "securemodels", MODEL
        )
        assert isinstance(obj, dict)
        return obj

    def ready(self, shard: str, generation: int | None = None) -> bool:
        model = self.model(shard)
        status = model.get("status") or {}
        wanted = generation or model["metadata"]["generation"]
        conditions = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        return (
            status.get("observedGeneration") == wanted
            and bool(conditions)
            and conditions[0]["status"] == "True"
        )

    def protected(self, shard: str) -> str | None:
        labels = self.core.read_namespace(self.namespaces[shard]).metadata.labels or {}
        return labels.get(PROTECTED)


@pytest.fixture
def shards(
    cluster: Cluster, k8s: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster3, dict[str, str]]]:
    install_crds(k8s)
    core = client.CoreV1Api(k8s)
    if not any(ns.metadata.name == OPERATOR_NAMESPACE for ns in core.list_namespace().items):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE)))
    artifacts = make_model(tmp_path_factory.mktemp("shards") / "model")
    run = uuid.uuid4().hex[:6]  # shard values of this run only: leftovers of earlier runs are no shard's
    values = {"a": f"a-{run}", "b": f"b-{run}", "none": f"none-{run}"}
    trust = f"shards-{run}"
    policy = yaml.safe_load((EXAMPLE / "trustpolicy.yaml").read_text())
    policy["metadata"]["name"] = f"test-shards-{run}"
    policy["spec"]["namespaceSelector"] = {"matchLabels": {"samd.dev/trust": trust}}
    policy["spec"]["signers"][0]["publicKey"] = artifacts.public_key_pem
    policy["spec"]["allowLocalFiles"] = True
    custom = client.CustomObjectsApi(k8s)
    custom.create_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy)
    try:
        with (
            scratch_namespace(k8s, "samd-shard-a") as ns_a,
            scratch_namespace(k8s, "samd-shard-b") as ns_b,
            scratch_namespace(k8s, "samd-shard-none") as ns_none,
        ):
            namespaces = {"a": ns_a, "b": ns_b, "none": ns_none}
            for shard, name in namespaces.items():
                labels = {"samd.dev/trust": trust, SHARD_LABEL: values[shard]}
                core.patch_namespace(name, {"metadata": {"labels": labels}})
                core.create_namespaced_secret(name, artifacts.keyset_secret("fraud-detection-key"))
            yield Cluster3(k8s, namespaces, artifacts), values
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "modeltrustpolicies", policy["metadata"]["name"])


def test_two_sharded_operators_each_reconcile_their_own_namespaces_and_hand_over_on_relabel(
    cluster: Cluster,
    shards: tuple[Cluster3, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    world, values = shards
    env = {
        "SAMD_ALLOW_LOCAL_FILES": "true",
        "SAMD_LOCAL_FILE_ROOTS": str(tmp_path_factory.getbasetemp()),
        "SAMD_RESYNC_INTERVAL": "1s",
    }
    logs = tmp_path_factory.mktemp("shard-logs")
    with (
        running_operator(
            cluster, logs / "a.log", SAMD_NAMESPACE_SELECTOR=f"{SHARD_LABEL}={values['a']}", **env
        ) as shard_a,
        running_operator(
            cluster, logs / "b.log", SAMD_NAMESPACE_SELECTOR=f"{SHARD_LABEL} in ({values['b']})", **env
        ) as shard_b,
    ):
        for shard in ("a", "b", "none"):
            body = yaml.safe_load((EXAMPLE / "securemodel.yaml").read_text())
            body["metadata"]["namespace"] = world.namespaces[shard]
            body["spec"]["artifact"] = {"uri": world.artifacts.artifact_uri}
            body["spec"]["signature"] = {"uri": world.artifacts.signature_uri}
            world.custom.create_namespaced_custom_object(
                GROUP, VERSION, world.namespaces[shard], "securemodels", body
            )

        eventually(lambda: world.ready("a") and world.ready("b"), 120, "both shards' models to be Ready")
        # Each instance reports (and so has reconciled) its own shard's model, and only that one.
        eventually(lambda: ready_models(shard_a) == {world.namespaces["a"]: 1.0}, 20, "shard a's metrics")
        eventually(lambda: ready_models(shard_b) == {world.namespaces["b"]: 1.0}, 20, "shard b's metrics")
        # Each leads through a Lease of its own, named after its selector, so both run at once.
        coordination = client.CoordinationV1Api(world.core.api_client)
        for instance, selector in (
            (shard_a, f"{SHARD_LABEL}={values['a']}"),
            (shard_b, f"{SHARD_LABEL} in ({values['b']})"),
        ):
            lease = f"samd-operator-{parse_selector(selector).shard_id()}"
            holder = coordination.read_namespaced_lease(lease, OPERATOR_NAMESPACE).spec.holder_identity
            assert holder == instance.identity
        # The namespace in no shard: its model has no status and nobody protects the namespace.
        assert world.protected("a") == "true"
        assert world.protected("b") == "true"
        assert (world.model("none").get("status") or {}) == {}, (
            "an instance reconciled a model outside its shard"
        )
        assert world.protected("none") is None

        # Move namespace a to shard b: b takes its model over, a lets it go.
        world.core.patch_namespace(
            world.namespaces["a"], {"metadata": {"labels": {SHARD_LABEL: values["b"]}}}
        )
        both = {world.namespaces["a"]: 1.0, world.namespaces["b"]: 1.0}
        eventually(lambda: ready_models(shard_b) == both, 30, "shard b to take namespace a's model over")
        eventually(lambda: ready_models(shard_a) == {}, 30, "shard a to let namespace a's model go")
        # A change to the handed-over model is reconciled, by b (a's filter no longer takes it).
        patched = world.custom.patch_namespaced_custom_object(
            GROUP, VERSION, world.namespaces["a"], "securemodels", MODEL,
            {"spec": {"serving": {"rateLimit": {"requestsPerSecond": 42}}}},
        )  # fmt: skip
        generation = patched["metadata"]["generation"]
        eventually(lambda: world.ready("a", generation), 60, "the handed-over model to converge")
        joined = [
            e for e in logged_events(shard_b, "shard_changed") if e.get("namespace") == world.namespaces["a"]
        ]
        left = [
            e for e in logged_events(shard_a, "shard_changed") if e.get("namespace") == world.namespaces["a"]
        ]
        assert [e["message"] for e in joined] == [f"namespace {world.namespaces['a']} joined this shard"]
        assert [e["message"] for e in left] == [f"namespace {world.namespaces['a']} left this shard"]
        (deployment,) = (
            client.AppsV1Api(world.core.api_client).list_namespaced_deployment(world.namespaces["a"]).items
        )
        commands = [list(c.command or []) for c in deployment.spec.template.spec.containers]
        (command,) = [c for c in commands if "--rate-limit" in c]
        assert command[command.index("--rate-limit") + 1] == "42"
        # Still nobody's: the model outside every shard was never touched.
        assert (world.model("none").get("status") or {}) == {}
