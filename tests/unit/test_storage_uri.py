"""Artifact URIs: what each form means, and a clear refusal for every malformed one."""

from __future__ import annotations

from pathlib import Path

import pytest

from samd.errors import UsageError
from samd.storage import HttpUrl, LocalPath, S3Location, parse_artifact_uri, redact_url

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("model.samd", Path("model.samd")),
        ("./models/a b.samd", Path("./models/a b.samd")),
        ("/var/lib/models/m.samd", Path("/var/lib/models/m.samd")),
        ("file:///var/lib/models/m.samd", Path("/var/lib/models/m.samd")),
        ("file://localhost/var/lib/m.samd", Path("/var/lib/m.samd")),
        ("file:///models/with%20space.samd", Path("/models/with space.samd")),
    ],
)
def test_paths_and_file_uris_name_local_files(uri: str, path: Path) -> None:
    assert parse_artifact_uri(uri) == LocalPath(path)


def test_s3_keys_keep_characters_that_would_be_a_query_elsewhere() -> None:
    assert parse_artifact_uri("s3://models-prod/fraud/v1?#.samd") == S3Location(
        "models-prod", "fraud/v1?#.samd"
    )


def test_a_bare_bucket_is_accepted_only_when_no_key_is_needed() -> None:
    with pytest.raises(UsageError, match="no object key"):
        parse_artifact_uri("s3://models-prod")
    assert parse_artifact_uri("s3://models-prod", require_key=False) == S3Location("models-prod", "")


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("s3:///key", "no bucket"),
        ("s3://Models/key", "not a valid bucket name"),
        ("s3://ab/key", "not a valid bucket name"),
        ("s3://a..b/key", "not a valid bucket name"),
        ("s3://bucket-ok/" + "k" * 1025, "1024-byte limit"),
        ("file://fileserver/share/m.samd", "only local files"),
        ("file:///m.samd?x=1", "query or fragment"),
        ("ftp://host/m.samd", "unsupported storage scheme ftp://"),
        ("gs://bucket/m.samd", "unsupported storage scheme gs://"),
        ("https:///path", "no host"),
        ("https://host:99999/m", "invalid port"),
        ("model\x00.samd", "NUL"),
    ],
)
def test_malformed_uris_are_refused_with_the_reason(uri: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        parse_artifact_uri(uri)


def test_plain_http_is_refused_unless_explicitly_allowed() -> None:
    with pytest.raises(UsageError, match="refusing plain http://") as refused:
        parse_artifact_uri("http://models.internal/m.samd")
    assert refused.value.hint is not None
    assert "https" in refused.value.hint
    allowed = parse_artifact_uri("http://models.internal/m.samd", allow_http=True)
    assert isinstance(allowed, HttpUrl)
    assert not allowed.secure


def test_credentials_in_a_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(UsageError, match="carries credentials") as refused:
        parse_artifact_uri("https://alice:hunter2@models.example/m.samd")
    assert "hunter2" not in str(refused.value)


def test_presigned_url_signatures_never_appear_in_messages() -> None:
    url = "https://models.example:8443/m.samd?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"
    location = parse_artifact_uri(url)
    assert isinstance(location, HttpUrl)
    assert location.url == url  # the request still uses the full URL
    assert "deadbeef" not in str(location)
    assert "AKIA" not in redact_url(url)
    assert str(location) == "https://models.example:8443/m.samd?..."
