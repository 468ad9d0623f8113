"""How the operator's API wrapper reports API failures: "not there" (404) is a type of its own,
refusals of the operator's own manifests are permanent but not "not there"."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from samd.operator.kube import AppliedCache, Kube, NotFound, translate

pytestmark = pytest.mark.unit


def api_error(code: int, message: str) -> ApiError:
    return ApiError(status=Status(code=code, message=message))


class FailingClient:
    """An API server that answers every list and apply with one error."""

    def __init__(self, error: ApiError) -> None:
        self.error = error

    def list(self, *_: Any, **__: Any) -> AsyncIterator[Any]:
        raise self.error

    async def patch(self, *_: Any, **__: Any) -> Any:
        raise self.error


def kube_failing_with(error: ApiError) -> Kube:
    return Kube(FailingClient(error), AppliedCache(datetime.timedelta(hours=1)))  # type: ignore[arg-type]


CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m", "namespace": "ns"}}


def test_a_404_is_not_found_and_still_a_permanent_error() -> None:
    error = translate(api_error(404, 'certificates.cert-manager.io "m" not found'), "reading Certificate m")
    assert isinstance(error, NotFound)
    assert isinstance(error, kopf.PermanentError)  # callers that catch PermanentError keep working
    assert error.code == 404
    assert str(error) == 'reading Certificate m: certificates.cert-manager.io "m" not found (HTTP 404)'


@pytest.mark.parametrize("code", [400, 422])
def test_a_refused_manifest_is_permanent_but_not_not_found(code: int) -> None:
    # A message that happens to mention "not found" must not make it one: only the code decides.
    error = translate(api_error(code, "field spec.x: not found in schema"), "applying ConfigMap m")
    assert isinstance(error, kopf.PermanentError)
    assert not isinstance(error, NotFound)


async def test_listing_a_kind_the_server_does_not_serve_raises_not_found() -> None:
    kube = kube_failing_with(api_error(404, "the server could not find the requested resource"))
    with pytest.raises(NotFound, match=r"listing ConfigMap: the server could not find"):
        await kube.list_in("v1", "ConfigMap", "ns", {"app": "m"})


async def test_an_apply_refused_as_invalid_is_not_taken_for_a_missing_api() -> None:
    kube = kube_failing_with(api_error(422, 'ConfigMap "m" is invalid: data: Invalid value'))
    with pytest.raises(kopf.PermanentError) as raised:
        await kube.apply(CONFIG_MAP)
    assert not isinstance(raised.value, NotFound)
    assert "(HTTP 422)" in str(raised.value)
