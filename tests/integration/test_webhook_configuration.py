"""The webhook configuration on the REAL API server, calling the webhook server over TLS at a local URL.

The API server must accept the configuration (its matchConditions CEL compiles for every kind),
and its rules and matchConditions must send exactly the requests that could run or read a model:
each case below creates or updates an object and checks whether the webhook saw it. The webhook
here records and allows (or denies a marked object), so that the routing is tested on its own;
the policy itself is tested with the real decider in the webhook's end-to-end tests.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from samd.policy import PROTECTED_NAMESPACE_LABEL
from samd.spec import GROUP, VERSION
from samd.webhook.config import WebhookConfig
from samd.webhook.configuration import build_webhook_configuration
from samd.webhook.review import AdmissionRequest, Decision
from samd.webhook.server import AdmissionServer, write_development_certificates
from tests.support.cluster import scratch_namespace
from tests.support.crds import install_crds
from tests.support.secret_references import Example, examples

pytestmark = pytest.mark.integration

MODEL = "samd.dev/model"


@dataclass
class RecordingDecider:
    """Allows everything, except objects named deny-* (denied) and explode-* (the decider raises)."""

    seen: list[tuple[str, str, str, str, bool]] = field(default_factory=list)
    requests: list[AdmissionRequest] = field(default_factory=list)
    ready: bool = True

    async def decide(self, request: AdmissionRequest) -> Decision:
        name = request.name or str((request.object or {}).get("metadata", {}).get("name", ""))
        self.seen.append((request.kind.kind, request.operation, name, request.sub_resource, request.dry_run))
        self.requests.append(request)
        if name.startswith("explode-"):
            raise RuntimeError("the test decider exploded on purpose")
        if name.startswith("deny-"):
            return Decision(False, f"{request.kind.kind} {name} is refused by the test decider", "TestDenied")
        return Decision(True, "recorded", "Recorded")

    def saw(self, kind: str, name: str) -> list[tuple[str, str, str, str, bool]]:
        return [entry for entry in self.seen if entry[0] == kind and entry[2] == name]


class ServerThread:
    """The admission server on its own event loop in a thread (the kubernetes client here is blocking)."""

    def __init__(self, config: WebhookConfig, decider: RecordingDecider) -> None:
        self.server = AdmissionServer(config, decider)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        # The API server's keep-alive connections were told to close; let their TLS shutdown finish.
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Webhook:
    decider: RecordingDecider
    namespace: str
    # Any: the API clients accept the plain dict manifests this test writes; their stubs want models.
    core: Any
    apps: Any
    batch: Any
    custom: Any


def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def installed(k8s: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    """The webhook server and its configuration, for this module's namespace only (set up once)."""
    install_crds(k8s)
    certs = write_development_certificates(tmp_path_factory.mktemp("certs"))
    decider = RecordingDecider()
    config = WebhookConfig(cert_file=certs.cert_file, key_file=certs.key_file, host="127.0.0.1", port=0)
    registration = client.AdmissionregistrationV1Api(k8s)
    core = client.CoreV1Api(k8s)
    name = f"samd-test-{uuid.uuid4().hex[:8]}"
    with scratch_namespace(k8s, "samd-webhook-config") as namespace, ServerThread(config, decider) as port:
        configuration = build_webhook_configuration(
            name=name, url=f"https://127.0.0.1:{port}/validate", ca_bundle=certs.ca_file.read_bytes()
        )
        # Only this module's namespace: the cluster is shared by the whole test session. It stands
        # for a protected namespace without carrying the label (an operator running in this session
        # would remove it, as nothing here is protected): which namespaces are sent is tested in
        # test_chart_blast_radius.py, the routing by rules and matchConditions here.
        for hook in configuration["webhooks"]:
            hook["namespaceSelector"]["matchExpressions"] = [
                expression
                for expression in hook["namespaceSelector"]["matchExpressions"]
                if expression["key"] != PROTECTED_NAMESPACE_LABEL
            ] + [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}]
        registration.create_validating_webhook_configuration(configuration)  # type: ignore[arg-type]
        try:
            # Pods need the namespace's default ServiceAccount (the controller manager creates it).
            wait_for(lambda: _has_default_service_account(core, namespace), "the default ServiceAccount")
            # The API server picks the configuration up asynchronously: probe until it calls us.
            probe = pod("probe", annotations={MODEL: "m"})

            def probed() -> bool:
                core.create_namespaced_pod(namespace, probe, dry_run="All")  # type: ignore[arg-type]
                return bool(decider.saw("Pod", "probe"))

            wait_for(probed, "the API server to call the webhook")
            yield Webhook(
                decider,
                namespace,
                core,
                client.AppsV1Api(k8s),
                client.BatchV1Api(k8s),
                client.CustomObjectsApi(k8s),
            )
        finally:
            registration.delete_validating_webhook_configuration(name)


@pytest.fixture
def webhook(installed: Webhook) -> Webhook:
    """The installed webhook with an empty record; each test names its objects uniquely."""
    installed.decider.seen.clear()
    installed.decider.requests.clear()
    return installed


def _has_default_service_account(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("default", namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def container(name: str = "app", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "registry.example/app:1", **extra}


def pod_spec(**extra: Any) -> dict[str, Any]:
    return {"containers": [container()], **extra}


def pod(
    name: str, *, annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
        "spec": pod_spec(**spec),
    }


def template(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "x"}, "annotations": annotations or {}},
        "spec": pod_spec(**spec),
    }


def deployment(name: str, pod_template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}}, "template": pod_template},
    }


def cronjob(name: str, pod_template: dict[str, Any]) -> dict[str, Any]:
    pod_template = copy.deepcopy(pod_template)
    pod_template["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": pod_template}}},
    }


SECRET_VOLUME = {"name": "keys", "secret": {"secretName": "some-model-keys"}}
PROJECTED_SECRET = {
    "name": "mixed",
    "projected": {"sources": [{"configMap": {"name": "c"}}, {"secret": {"name": "some-model-keys"}}]},
}


@pytest.mark.parametrize(
    ("name", "manifest", "sent"),
    [
        ("plain", pod("plain"), False),
        ("annotated", pod("annotated", annotations={MODEL: "fraud"}), True),
        ("labelled", pod("labelled", labels={MODEL: "fraud"}), True),
        ("secret-volume", pod("secret-volume", volumes=[SECRET_VOLUME]), True),
        ("projected-secret", pod("projected-secret", volumes=[PROJECTED_SECRET]), True),
        (
            "projected-without-secret",
            pod(
                "projected-without-secret",
                volumes=[{"name": "p", "projected": {"sources": [{"configMap": {"name": "c"}}]}}],
            ),
            False,
        ),
        ("config-volume", pod("config-volume", volumes=[{"name": "c", "configMap": {"name": "c"}}]), False),
        (
            "env-secret",
            pod(
                "env-secret",
                containers=[
                    container(env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
                ],
            ),
            True,
        ),
        (
            "init-envfrom-secret",
            pod(
                "init-envfrom-secret",
                initContainers=[container("init", envFrom=[{"secretRef": {"name": "s"}}])],
            ),
            True,
        ),
        (
            "args-uri",
            pod("args-uri", containers=[container(args=["--model", "s3://models/fraud.samd"])]),
            True,
        ),
        (
            "command-uri",
            pod("command-uri", containers=[container(command=["fetch", "file:///m/x.samd"])]),
            True,
        ),
        (
            "env-uri",
            pod("env-uri", containers=[container(env=[{"name": "U", "value": "https://b/m"}])]),
            True,
        ),
        ("env-plain", pod("env-plain", containers=[container(env=[{"name": "U", "value": "info"}])]), False),
    ],
)
def test_pods_are_sent_only_when_they_could_run_or_read_a_model(
    webhook: Webhook, name: str, manifest: dict[str, Any], sent: bool
) -> None:
    webhook.core.create_namespaced_pod(webhook.namespace, manifest, dry_run="All")

    seen = webhook.decider.saw("Pod", name)
    assert bool(seen) is sent
    if sent:
        assert seen == [("Pod", "CREATE", name, "", True)]  # dry run: sent (sideEffects None) and marked


POD_EXAMPLES = [example for example in examples() if example.list_name != "ephemeralContainers"]
EPHEMERAL_EXAMPLES = [example for example in examples() if example.list_name == "ephemeralContainers"]


def _named(example: Example) -> str:
    return "ref-" + example.path.replace("[]", "").replace(".", "-").lower()


@pytest.mark.parametrize("example", POD_EXAMPLES, ids=lambda example: example.path)
def test_a_pod_naming_a_secret_in_any_way_the_table_knows_is_sent(webhook: Webhook, example: Example) -> None:
    name = _named(example)
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": example.spec}

    webhook.core.create_namespaced_pod(webhook.namespace, manifest, dry_run="All")

    assert webhook.decider.saw("Pod", name) == [("Pod", "CREATE", name, "", True)]


@pytest.mark.parametrize("example", POD_EXAMPLES[:4], ids=lambda example: example.path)
def test_a_workload_template_naming_a_secret_is_sent(webhook: Webhook, example: Example) -> None:
    name = _named(example)
    pod_template = {"metadata": {"labels": {"app": "x"}}, "spec": copy.deepcopy(example.spec)}

    webhook.apps.create_namespaced_deployment(
        webhook.namespace, deployment(name, pod_template), dry_run="All"
    )
    webhook.batch.create_namespaced_cron_job(webhook.namespace, cronjob(name, pod_template), dry_run="All")

    assert webhook.decider.saw("Deployment", name)
    assert webhook.decider.saw("CronJob", name)


@pytest.mark.parametrize("example", EPHEMERAL_EXAMPLES, ids=lambda example: example.path)
def test_a_debug_container_naming_a_secret_is_sent(webhook: Webhook, example: Example) -> None:
    name = _named(example)
    webhook.core.create_namespaced_pod(webhook.namespace, pod(name))
    assert webhook.decider.saw("Pod", name) == []

    webhook.core.patch_namespaced_pod_ephemeralcontainers(
        name, webhook.namespace, {"spec": {"ephemeralContainers": example.spec["ephemeralContainers"]}}
    )

    seen = webhook.decider.saw("Pod", name)
    assert seen  # at least once: the API server runs admission again when it retries after a conflict
    assert {entry[1:4] for entry in seen} == {("UPDATE", name, "ephemeralcontainers")}


@pytest.mark.parametrize("path", ["/var/lib/kubelet", "/", "/var//lib/./kubelet/pods", "/data/cache"])
def test_every_pod_with_a_host_path_is_sent(webhook: Webhook, path: str) -> None:
    # The decider refuses the ones that show the kubelet's pod directories; CEL cannot normalise paths.
    name = "host-" + str(abs(hash(path)))
    manifest = pod(name, volumes=[{"name": "node", "hostPath": {"path": path}}])

    webhook.core.create_namespaced_pod(webhook.namespace, manifest, dry_run="All")

    assert webhook.decider.saw("Pod", name) == [("Pod", "CREATE", name, "", True)]


def test_the_service_account_token_volume_does_not_make_every_pod_match(webhook: Webhook) -> None:
    created = webhook.core.create_namespaced_pod(webhook.namespace, pod("with-token"))

    volumes = [volume.name for volume in created.spec.volumes or []]
    assert any(name.startswith("kube-api-access-") for name in volumes)  # the API server added it
    assert webhook.decider.saw("Pod", "with-token") == []


@pytest.mark.parametrize(
    ("name", "annotations", "spec", "sent"),
    [
        ("plain-deploy", None, {}, False),
        ("model-deploy", {MODEL: "fraud"}, {}, True),
        ("secret-deploy", None, {"volumes": [SECRET_VOLUME]}, True),
    ],
)
def test_deployments_are_judged_by_their_pod_template(
    webhook: Webhook, name: str, annotations: dict[str, str] | None, spec: dict[str, Any], sent: bool
) -> None:
    webhook.apps.create_namespaced_deployment(
        webhook.namespace, deployment(name, template(annotations, **spec)), dry_run="All"
    )

    assert bool(webhook.decider.saw("Deployment", name)) is sent


@pytest.mark.parametrize(
    ("name", "spec", "sent"),
    [
        ("plain-cron", {}, False),
        ("secret-cron", {"volumes": [SECRET_VOLUME]}, True),
        ("uri-cron", {"containers": [container(args=["https://models/x"])]}, True),
    ],
)
def test_cronjobs_are_judged_by_their_job_template(
    webhook: Webhook, name: str, spec: dict[str, Any], sent: bool
) -> None:
    webhook.batch.create_namespaced_cron_job(
        webhook.namespace, cronjob(name, template(**spec)), dry_run="All"
    )

    assert bool(webhook.decider.saw("CronJob", name)) is sent


def test_every_workload_kind_is_sent(webhook: Webhook) -> None:
    model_template = template({MODEL: "fraud"})
    selector = {"matchLabels": {"app": "x"}}
    job_template = copy.deepcopy(model_template)
    job_template["spec"]["restartPolicy"] = "Never"
    ns = webhook.namespace
    webhook.apps.create_namespaced_stateful_set(
        ns,
        {
            "metadata": {"name": "ss"},
            "spec": {"selector": selector, "serviceName": "s", "template": model_template},
        },
        dry_run="All",
    )
    webhook.apps.create_namespaced_daemon_set(
        ns,
        {"metadata": {"name": "ds"}, "spec": {"selector": selector, "template": model_template}},
        dry_run="All",
    )
    webhook.apps.create_namespaced_replica_set(
        ns,
        {"metadata": {"name": "rs"}, "spec": {"selector": selector, "template": model_template}},
        dry_run="All",
    )
    webhook.batch.create_namespaced_job(
        ns, {"metadata": {"name": "job"}, "spec": {"template": job_template}}, dry_run="All"
    )

    for kind, name in (("StatefulSet", "ss"), ("DaemonSet", "ds"), ("ReplicaSet", "rs"), ("Job", "job")):
        assert webhook.decider.saw(kind, name), kind


def test_securemodels_are_sent_and_metadata_only_updates_are_not(webhook: Webhook) -> None:
    model = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SecureModel",
        "metadata": {"name": "fraud"},
        "spec": {
            "format": "onnx",
            "version": "1.0.0",
            "owner": "ml-ops",
            "artifact": {"uri": "s3://models/fraud.samd"},
            "signature": {"uri": "s3://models/fraud.sig"},
        },
    }
    webhook.custom.create_namespaced_custom_object(GROUP, VERSION, webhook.namespace, "securemodels", model)
    webhook.custom.patch_namespaced_custom_object(
        GROUP, VERSION, webhook.namespace, "securemodels", "fraud", {"metadata": {"labels": {"team": "risk"}}}
    )

    assert [entry[1] for entry in webhook.decider.saw("SecureModel", "fraud")] == ["CREATE"]

    webhook.custom.patch_namespaced_custom_object(
        GROUP, VERSION, webhook.namespace, "securemodels", "fraud", {"spec": {"version": "1.1.0"}}
    )

    updates = [r for r in webhook.decider.requests if r.operation == "UPDATE" and r.name == "fraud"]
    # At least once: the API server runs admission again when it retries a patch after a conflict
    # (its watch cache may not yet hold the label patch's resourceVersion).
    assert updates
    for update in updates:
        assert update.object is not None
        assert update.old_object is not None
        assert update.object["spec"]["version"] == "1.1.0"
        assert update.old_object["spec"]["version"] == "1.0.0"


def test_pod_updates_are_sent_only_when_the_spec_changes(webhook: Webhook) -> None:
    ns = webhook.namespace
    webhook.core.create_namespaced_pod(ns, pod("model-pod", annotations={MODEL: "fraud"}))
    webhook.core.patch_namespaced_pod("model-pod", ns, {"metadata": {"labels": {"x": "y"}}})

    assert [entry[1] for entry in webhook.decider.saw("Pod", "model-pod")] == ["CREATE"]

    webhook.core.patch_namespaced_pod(
        "model-pod", ns, {"spec": {"containers": [{"name": "app", "image": "registry.example/app:2"}]}}
    )

    updates = [r for r in webhook.decider.requests if r.operation == "UPDATE" and r.name == "model-pod"]
    # At least once: the API server runs admission again when it retries a patch after a conflict.
    assert updates
    for update in updates:
        assert update.object is not None
        assert update.old_object is not None
        assert update.object["spec"]["containers"][0]["image"] == "registry.example/app:2"
        assert update.old_object["spec"]["containers"][0]["image"] == "registry.example/app:1"


def test_a_debug_container_added_to_a_model_pod_is_sent(webhook: Webhook) -> None:
    ns = webhook.namespace
    webhook.core.create_namespaced_pod(ns, pod("debugged", annotations={MODEL: "fraud"}))
    webhook.core.patch_namespaced_pod_ephemeralcontainers(
        "debugged",
        ns,
        {
            "spec": {
                "ephemeralContainers": [{"name": "debug", "image": "busybox", "targetContainerName": "app"}]
            }
        },
    )

    seen = [entry[1:4] for entry in webhook.decider.saw("Pod", "debugged")]
    assert seen[0] == ("CREATE", "debugged", "")
    # At least once: the API server runs admission again when it retries after a conflict.
    assert seen[1:]
    assert set(seen[1:]) == {("UPDATE", "debugged", "ephemeralcontainers")}


def test_an_object_being_deleted_can_lose_its_finalizers(webhook: Webhook) -> None:
    ns = webhook.namespace
    manifest = deployment("finalized", template({MODEL: "fraud"}))
    manifest["metadata"]["finalizers"] = ["samd.dev/test"]
    webhook.apps.create_namespaced_deployment(ns, manifest)
    webhook.apps.delete_namespaced_deployment("finalized", ns)
    # A controller's update begun before the deletion may still reach the webhook: let it land first.
    time.sleep(1)
    webhook.decider.seen.clear()

    # Changing the spec of an object that is going away is not sent (refusing it would keep it stuck)...
    changed = {
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.example/app:3"}]}}}
    }
    webhook.apps.patch_namespaced_deployment("finalized", ns, changed)
    webhook.apps.patch_namespaced_deployment("finalized", ns, {"metadata": {"finalizers": None}})

    assert webhook.decider.saw("Deployment", "finalized") == []
    wait_for(lambda: not webhook.apps.list_namespaced_deployment(ns).items, "the Deployment to go")


def test_the_api_server_shows_the_webhooks_denial_and_fail_closed_messages(webhook: Webhook) -> None:
    ns = webhook.namespace

    with pytest.raises(ApiException) as denied:
        webhook.core.create_namespaced_pod(ns, pod("deny-me", annotations={MODEL: "fraud"}))
    with pytest.raises(ApiException) as failed:
        webhook.core.create_namespaced_pod(ns, pod("explode-me", annotations={MODEL: "fraud"}))

    assert denied.value.status == 403
    assert json.loads(denied.value.body or "{}")["message"] == (
        'admission webhook "pods.webhook.samd.dev" denied the request: Pod deny-me is refused by the test decider'
    )
    assert failed.value.status == 500
    assert json.loads(failed.value.body or "{}")["message"] == (
        'admission webhook "pods.webhook.samd.dev" denied the request: '
        "SAMD admission webhook could not decide: RuntimeError: the test decider exploded on purpose; "
        "the request is denied because failing open would admit unverified models — check the webhook logs"
    )
    names = {p.metadata.name for p in webhook.core.list_namespaced_pod(ns).items}
    assert not names & {"deny-me", "explode-me"}
