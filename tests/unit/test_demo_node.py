"""`make demo` chooses the real node when the machine can run one, and says why when it cannot."""

from __future__ import annotations

import json

import pytest
from hack.demo import describe, node_choice
from hack.pod_client import SCRIPT, Call, client_pod, copied_secret, outcome

pytestmark = pytest.mark.unit

NOT_ROOT = "the real node needs root (it runs containerd, kubelet and changes host networking)"


def test_a_machine_that_can_run_the_node_gets_the_real_node() -> None:
    choice = node_choice("auto", problems=[])
    assert choice.real
    assert "root" in choice.reason


def test_without_root_or_a_kernel_feature_the_demo_falls_back_and_says_why() -> None:
    no_bridge = "the kernel has no bridge netfilter (/proc/sys/net/bridge missing)"
    choice = node_choice("auto", problems=[NOT_ROOT, no_bridge])
    assert not choice.real
    assert choice.reason == f"{NOT_ROOT}; {no_bridge}"


def test_the_fake_node_can_be_asked_for_and_a_real_one_that_cannot_run_is_an_error() -> None:
    assert not node_choice("fake", problems=[]).real
    with pytest.raises(
        SystemExit, match=r"SAMD_DEMO_NODE=real, but this machine cannot run a real node: .*root"
    ):
        node_choice("real", problems=[NOT_ROOT])
    with pytest.raises(SystemExit, match="'sometimes' is not one of auto, real, fake"):
        node_choice("sometimes", problems=[])


def test_the_demo_describes_each_client_outcome_for_a_person() -> None:
    assert describe({"outcome": "unreachable", "error": "TimeoutError: timed out"}).startswith(
        "cut off by the NetworkPolicy"
    )
    assert describe({"outcome": "refused", "error": "SSLError: certificate required"}).startswith(
        "refused by the server at the TLS handshake"
    )
    assert describe({"outcome": "answered", "status": 403, "body": {"error": "not allowed"}}) == (
        'HTTP 403: {"error": "not allowed"}'
    )
    answered = {
        "outcome": "answered",
        "status": 200,
        "headers": {"samd-model-name": "fraud-detection"},
        "body": {"outputs": [{"name": "fraud_probability", "data": [0.9]}]},
    }
    assert describe(answered).splitlines()[-1] == 'outputs: {"fraud_probability": [0.9]}'


def test_the_client_pod_runs_the_restricted_profile_and_mounts_only_the_ca_without_a_certificate() -> None:
    call = Call(address="10.0.0.7", port=8443, server_name="m.ns.svc", model="m", rows=[[1.0, 2.0]])
    pod = client_pod(
        "c", call, image="samd:0.1.0", labels={"app": "x"}, tls_secret="m-client-x", certificate=False
    )
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["command"][:3] == ["python", "-c", SCRIPT]
    argument = json.loads(container["command"][3])
    assert (argument["address"], argument["server_name"], argument["certificate"]) == (
        "10.0.0.7",
        "m.ns.svc",
        False,
    )
    assert pod["spec"]["volumes"][0]["secret"] == {
        "secretName": "m-client-x",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }


def test_a_copied_secret_keeps_type_and_data_only_and_a_client_log_without_a_result_is_an_error() -> None:
    read = {
        "metadata": {"name": "s", "namespace": "a", "uid": "u", "ownerReferences": [{"name": "o"}]},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "Y2VydA=="},
    }
    assert copied_secret(read, "b") == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "b"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "Y2VydA=="},
    }
    assert outcome('noise\n{"outcome": "refused", "error": "x"}\n') == {"outcome": "refused", "error": "x"}
    with pytest.raises(ValueError, match="printed no result"):
        outcome("Traceback (most recent call last):\n")
