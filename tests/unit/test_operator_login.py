"""The operator's login: the service variables in a pod (no cluster DNS needed), KUBECONFIG elsewhere."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from samd.operator import handlers

pytestmark = pytest.mark.unit
login: Any = handlers.login  # kopf types its decorated handlers as activity callbacks


def service_account(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(
        server="https://kubernetes.default.svc", token="t", default_namespace="samd-system"
    )


def test_in_a_pod_the_api_server_is_the_service_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "login_with_service_account", service_account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = login()
    assert info is not None
    assert (info.server, info.token, info.default_namespace) == ("https://10.0.0.1:443", "t", "samd-system")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    info = login()
    assert info is not None
    assert info.server == "https://[fd00::1]:443"


def test_outside_a_pod_the_kubeconfig_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = kopf.ConnectionInfo(server="https://127.0.0.1:6443")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)
    monkeypatch.setattr(kopf, "login_with_kubeconfig", lambda **_: kubeconfig)
    assert login() is kubeconfig
