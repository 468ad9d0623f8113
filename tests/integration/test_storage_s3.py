"""S3 storage against the real local AWS-compatible server (moto in server mode).

Failures S3 produces under load (SlowDown, 5xx, connections cut mid-body) are injected by a
small HTTP proxy between the client and the server (tests/support/s3_proxy.py); it also records
the requests, so retry behaviour is asserted on the wire.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from mypy_boto3_s3 import S3Client

from samd.errors import StorageError, UsageError
from samd.storage import (
    PUBLIC_ACCESS_BLOCK_FLAGS,
    RetryPolicy,
    artifact_size,
    check_bucket_posture,
    open_artifact,
    put_artifact,
)
from samd.storage.guard import AddressPolicy, AllowedEndpoint, IPAddress
from tests.support.moto_server import MotoServer
from tests.support.s3_proxy import Fault, S3Proxy, query_matches, running_proxy

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
PART = 5 << 20  # S3's smallest part size
BIG = os.urandom(2 * PART + 123_456)  # three parts
SMALL = os.urandom(200_000)


@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test servers are on loopback; a proxy set in the environment must not sit in between."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def proxy(aws_env: MotoServer) -> Iterator[S3Proxy]:
    with running_proxy(aws_env.endpoint) as server:
        yield server
    assert server.errors == [], f"the test proxy itself failed: {server.errors}"


@pytest.fixture
def s3(aws_env: MotoServer) -> S3Client:
    """A plain boto3 client straight to the server, to set up and inspect state."""
    return boto3.client("s3", endpoint_url=aws_env.endpoint)


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = f"samd-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def keys(s3: S3Client, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def pending_uploads(s3: S3Client, bucket: str) -> list[str]:
    return [upload["Key"] for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


class BrokenSource(io.RawIOBase):
    def __init__(self, good: bytes, error: Exception) -> None:
        self._good = io.BytesIO(good)
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = self._good.readinto(buffer)
        if count:
            return count
        raise self._error


class ProducerError(Exception):
    pass


# --- get and put --------------------------------------------------------------------------------


def test_small_artifact_round_trip(bucket: str, proxy: S3Proxy) -> None:
    uri = f"s3://{bucket}/models/small.samd"
    put_artifact(uri, io.BytesIO(SMALL), endpoint_url=proxy.endpoint)
    assert proxy.count("PUT") == 1  # one request, no multipart upload
    with open_artifact(uri, endpoint_url=proxy.endpoint) as reader:
        assert reader.size == len(SMALL)
        assert reader.read() == SMALL
    assert artifact_size(uri, endpoint_url=proxy.endpoint) == len(SMALL)


def test_large_artifact_goes_up_in_parts_and_streams_back(s3: S3Client, bucket: str, proxy: S3Proxy) -> None:
    uri = f"s3://{bucket}/big.samd"
    reported: list[int] = []
    put_artifact(uri, io.BytesIO(BIG), endpoint_url=proxy.endpoint, part_size=PART, progress=reported.append)
    assert proxy.count("PUT", "partNumber") == 3
    assert sum(reported) == len(BIG)
    assert s3.head_object(Bucket=bucket, Key="big.samd")["ETag"].endswith('-3"')  # a 3-part object
    buffer = bytearray(1 << 20)
    received = bytearray()
    with open_artifact(uri, endpoint_url=proxy.endpoint) as reader:
        while count := reader.readinto(buffer):
            received += buffer[:count]
    assert received == BIG


def test_the_endpoint_comes_from_the_argument_or_the_environment(
    aws_env: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"s3://{bucket}/env.samd"
    put_artifact(uri, io.BytesIO(SMALL))  # AWS_ENDPOINT_URL, set by the fixture
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    with open_artifact(uri, endpoint_url=aws_env.endpoint) as reader:
        assert reader.read() == SMALL


def test_an_unreachable_endpoint_is_transient_and_bounded(bucket: str) -> None:
    with S3Proxy("http://127.0.0.1:9") as closed:
        endpoint = closed.endpoint  # a port that was just released: nothing listens there
    with (
        pytest.raises(StorageError, match=r"connection failed.*gave up after 4 attempts") as raised,
        open_artifact(f"s3://{bucket}/x", endpoint_url=endpoint, retry=FAST, timeout=5),
    ):
        pass
    assert raised.value.transient


@pytest.mark.parametrize(
    ("sse", "expected"), [("AES256", "AES256"), ("SSE-S3", "AES256"), ("aws:kms", "aws:kms")]
)
def test_server_side_encryption_on_put(s3: S3Client, bucket: str, sse: str, expected: str) -> None:
    put_artifact(f"s3://{bucket}/enc.samd", io.BytesIO(SMALL), sse=sse)
    assert s3.head_object(Bucket=bucket, Key="enc.samd")["ServerSideEncryption"] == expected


def test_sse_kms_with_a_named_key_also_applies_to_multipart_uploads(
    s3: S3Client, bucket: str, aws_env: MotoServer
) -> None:
    key_id = boto3.client("kms", endpoint_url=aws_env.endpoint).create_key()["KeyMetadata"]["KeyId"]
    put_artifact(f"s3://{bucket}/kms.samd", io.BytesIO(BIG), sse="SSE-KMS", kms_key_id=key_id, part_size=PART)
    head = s3.head_object(Bucket=bucket, Key="kms.samd")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(key_id)
    assert head["ETag"].endswith('-3"')


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"sse": "rot13"}, "unknown server-side encryption"),
        ({"kms_key_id": "alias/models"}, "without server-side encryption"),
        ({"sse": "AES256", "kms_key_id": "alias/models"}, "only applies to aws:kms"),
        ({"part_size": 1 << 20}, "outside S3's limits"),
        ({"concurrency": 0}, "at least 1"),
    ],
)
def test_bad_put_options_are_refused_before_any_request(
    bucket: str, proxy: S3Proxy, options: dict[str, object], reason: str
) -> None:
    with pytest.raises(UsageError, match=reason):
        put_artifact(f"s3://{bucket}/x.samd", io.BytesIO(SMALL), endpoint_url=proxy.endpoint, **options)  # type: ignore[arg-type]
    assert proxy.seen == []


def test_a_missing_object_is_a_permanent_error_after_one_request(bucket: str, proxy: S3Proxy) -> None:
    with (
        pytest.raises(StorageError, match=rf"cannot read s3://{bucket}/nope.samd: no such object") as raised,
        open_artifact(f"s3://{bucket}/nope.samd", endpoint_url=proxy.endpoint, retry=FAST),
    ):
        pass
    assert not raised.value.transient
    assert proxy.count("GET") == 1


def test_a_missing_object_has_no_size(bucket: str, proxy: S3Proxy) -> None:
    with pytest.raises(StorageError, match="no such object"):
        artifact_size(f"s3://{bucket}/nope.samd", endpoint_url=proxy.endpoint, retry=FAST)
    assert proxy.count("HEAD") == 1


def test_a_missing_bucket_is_a_permanent_error(proxy: S3Proxy) -> None:
    with pytest.raises(StorageError, match="the bucket does not exist") as raised:
        put_artifact(
            "s3://samd-no-such-bucket/x.samd", io.BytesIO(SMALL), endpoint_url=proxy.endpoint, retry=FAST
        )
    assert not raised.value.transient
    assert proxy.count("PUT") == 1


def test_access_denied_is_not_retried(bucket: str, proxy: S3Proxy) -> None:
    proxy.faults.append(Fault("GET", times=10, status=403, code="AccessDenied"))
    with (
        pytest.raises(StorageError, match="access denied") as raised,
        open_artifact(f"s3://{bucket}/x.samd", endpoint_url=proxy.endpoint, retry=FAST),
    ):
        pass
    assert not raised.value.transient
    assert raised.value.hint is not None
    assert proxy.count("GET") == 1


# --- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(503, "SlowDown"), (500, "InternalError"), (400, "RequestTimeout"), (503, "ServiceUnavailable")],
)
def test_throttling_and_server_errors_are_retried(
    s3: S3Client, bucket: str, proxy: S3Proxy, status: int, code: str
) -> None:
    s3.put_object(Bucket=bucket, Key="m.samd", Body=SMALL)
    proxy.faults.append(Fault("GET", times=2, status=status, code=code))
    with open_artifact(f"s3://{bucket}/m.samd", endpoint_url=proxy.endpoint, retry=FAST) as reader:
        assert reader.read() == SMALL
    assert proxy.count("GET") == 3


def test_a_read_that_keeps_failing_is_tried_max_attempts_times_in_all(bucket: str, proxy: S3Proxy) -> None:
    proxy.faults.append(Fault("GET", times=100, status=500, code="InternalError"))
    with (
        pytest.raises(StorageError, match=r"InternalError .*\(gave up after 4 attempts\)") as raised,
        open_artifact(f"s3://{bucket}/m.samd", endpoint_url=proxy.endpoint, retry=FAST),
    ):
        pass
    assert raised.value.transient
    assert proxy.count("GET") == FAST.max_attempts  # botocore's retries, not multiplied by the reader's


def test_persistent_server_errors_give_up_with_a_transient_error_naming_the_object(
    bucket: str, proxy: S3Proxy
) -> None:
    proxy.faults.append(Fault("PUT", times=100, status=500, code="InternalError"))
    uri = f"s3://{bucket}/m.samd"
    with pytest.raises(StorageError) as raised:
        put_artifact(uri, io.BytesIO(SMALL), endpoint_url=proxy.endpoint, retry=FAST)
    assert raised.value.message == (
        f"cannot write {uri}: InternalError (injected by the test proxy) (gave up after 4 attempts)"
    )
    assert raised.value.transient  # worth trying again later
    assert proxy.count("PUT") == FAST.max_attempts


def test_an_upload_goes_through_transient_errors_on_its_parts(
    s3: S3Client, bucket: str, proxy: S3Proxy
) -> None:
    proxy.faults += [
        Fault("PUT", query="partNumber=2", status=503, code="SlowDown"),
        Fault("PUT", query="partNumber=3", status=500, code="InternalError"),
        Fault("POST", query="uploadId", status=503, code="ServiceUnavailable"),  # the completion
    ]
    reported: list[int] = []
    put_artifact(
        f"s3://{bucket}/big.samd",
        io.BytesIO(BIG),
        endpoint_url=proxy.endpoint,
        part_size=PART,
        retry=FAST,
        progress=reported.append,
    )
    assert s3.get_object(Bucket=bucket, Key="big.samd")["Body"].read() == BIG
    assert [proxy.count("PUT", f"partNumber={n}") for n in (1, 2, 3)] == [1, 2, 2]  # each part alone
    assert proxy.count("POST", "uploads") == 1  # one multipart upload, not a restart
    assert sum(reported) == len(BIG)  # a progress bar ends at 100 %, however often parts were resent


def test_a_part_that_keeps_failing_aborts_the_upload_with_a_clear_error(
    s3: S3Client, bucket: str, proxy: S3Proxy
) -> None:
    proxy.faults.append(Fault("PUT", times=100, query="partNumber=2", status=503, code="ServiceUnavailable"))
    uri = f"s3://{bucket}/big.samd"
    with pytest.raises(StorageError) as raised:
        put_artifact(uri, io.BytesIO(BIG), endpoint_url=proxy.endpoint, part_size=PART, retry=FAST)
    assert raised.value.message == (
        f"cannot write {uri}: ServiceUnavailable (injected by the test proxy) (gave up after 4 attempts)"
    )
    assert raised.value.transient
    assert proxy.count("PUT", "partNumber=2") == FAST.max_attempts
    assert proxy.count("DELETE", "uploadId") == 1  # the abort
    assert keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []


def test_every_part_carries_a_checksum_the_server_verifies(bucket: str, proxy: S3Proxy) -> None:
    put_artifact(f"s3://{bucket}/big.samd", io.BytesIO(BIG), endpoint_url=proxy.endpoint, part_size=PART)
    parts = [seen for seen in proxy.seen if seen.method == "PUT" and query_matches(seen.query, "partNumber")]
    assert len(parts) == 3
    assert all("x-amz-checksum-crc32" in {name.lower() for name in part.headers} for part in parts)


def test_a_download_cut_mid_body_resumes_from_where_it_stopped(
    s3: S3Client, bucket: str, proxy: S3Proxy
) -> None:
    s3.put_object(Bucket=bucket, Key="big.samd", Body=BIG)
    etag = s3.head_object(Bucket=bucket, Key="big.samd")["ETag"]
    proxy.faults.append(Fault("GET", truncate_after=3_000_000))
    with open_artifact(f"s3://{bucket}/big.samd", endpoint_url=proxy.endpoint, retry=FAST) as reader:
        assert reader.read() == BIG
    gets = [seen for seen in proxy.seen if seen.method == "GET"]
    assert [(g.headers.get("Range"), g.headers.get("If-Match")) for g in gets] == [
        (None, None),
        ("bytes=3000000-", etag),
    ]


def test_an_object_overwritten_mid_download_is_not_spliced(s3: S3Client, bucket: str, proxy: S3Proxy) -> None:
    s3.put_object(Bucket=bucket, Key="big.samd", Body=BIG)
    proxy.faults.append(
        Fault(
            "GET",
            truncate_after=1_000_000,
            before_cut=lambda: s3.put_object(Bucket=bucket, Key="big.samd", Body=SMALL),
        )
    )
    with (
        pytest.raises(StorageError, match="the object changed while it was being read") as raised,
        open_artifact(f"s3://{bucket}/big.samd", endpoint_url=proxy.endpoint, retry=FAST) as reader,
    ):
        reader.read()
    assert not raised.value.transient


def test_the_address_guard_checks_every_request_of_a_multipart_upload(
    s3: S3Client, bucket: str, proxy: S3Proxy
) -> None:
    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[IPAddress]:
        resolved.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    policy = AddressPolicy(allowed=(AllowedEndpoint(host="localhost", allow_http=True),), resolver=resolver)
    endpoint = proxy.endpoint.replace("127.0.0.1", "localhost")
    put_artifact(
        f"s3://{bucket}/big.samd",
        io.BytesIO(BIG),
        endpoint_url=endpoint,
        part_size=PART,
        address_policy=policy,
    )
    assert s3.get_object(Bucket=bucket, Key="big.samd")["Body"].read() == BIG
    assert len(proxy.seen) == 5  # start, three parts, complete
    assert resolved == ["localhost"] * len(proxy.seen)  # each one checked before it was sent


# --- nothing half-written -----------------------------------------------------------------------


def test_a_failing_producer_leaves_no_object_and_no_parts(s3: S3Client, bucket: str) -> None:
    source = io.BufferedReader(BrokenSource(BIG[: 2 * PART + 10], ProducerError("encryption failed")))
    with pytest.raises(ProducerError):
        put_artifact(f"s3://{bucket}/big.samd", source, part_size=PART)
    assert keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []


def test_an_unreadable_source_is_a_storage_error_and_leaves_nothing(s3: S3Client, bucket: str) -> None:
    source = io.BufferedReader(BrokenSource(BIG[: PART + 10], OSError(5, "Input/output error")))
    with pytest.raises(StorageError, match=r"reading the data to write to .* failed: Input/output error"):
        put_artifact(f"s3://{bucket}/big.samd", source, part_size=PART)
    assert keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []


def test_a_part_refused_for_good_aborts_the_whole_upload(s3: S3Client, bucket: str, proxy: S3Proxy) -> None:
    proxy.faults.append(Fault("PUT", times=100, query="partNumber=3", status=403, code="AccessDenied"))
    with pytest.raises(StorageError, match="access denied") as raised:
        put_artifact(f"s3://{bucket}/big.samd", io.BytesIO(BIG), endpoint_url=proxy.endpoint, part_size=PART)
    assert not raised.value.transient
    assert proxy.count("PUT", "partNumber=3") == 1
    assert proxy.count("DELETE", "uploadId") == 1  # the abort
    assert keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []


def test_an_existing_object_survives_a_failed_overwrite(s3: S3Client, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="m.samd", Body=SMALL)
    source = io.BufferedReader(BrokenSource(BIG[: PART + 1], ProducerError("boom")))
    with pytest.raises(ProducerError):
        put_artifact(f"s3://{bucket}/m.samd", source, part_size=PART)
    assert s3.get_object(Bucket=bucket, Key="m.samd")["Body"].read() == SMALL


# --- bucket posture -----------------------------------------------------------------------------


def block_public_access(
    s3: S3Client, bucket: str, flags: tuple[str, ...] = PUBLIC_ACCESS_BLOCK_FLAGS
) -> None:
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": "BlockPublicAcls" in flags,
            "IgnorePublicAcls": "IgnorePublicAcls" in flags,
            "BlockPublicPolicy": "BlockPublicPolicy" in flags,
            "RestrictPublicBuckets": "RestrictPublicBuckets" in flags,
        },
    )


def test_an_encrypted_blocked_bucket_is_secure(s3: S3Client, bucket: str) -> None:
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": "alias/m",
                    }
                }
            ]
        },
    )
    block_public_access(s3, bucket)
    posture = check_bucket_posture(f"s3://{bucket}/models/any.samd")
    assert posture.secure
    assert posture.findings == ()
    assert (posture.encrypted, posture.encryption, posture.kms_key_id) == (True, "aws:kms", "alias/m")
    assert posture.public_access_blocked
    assert posture.policy_public is False
    assert posture.acl_public is False


def test_a_bare_bucket_is_insecure_with_a_finding_for_each_gap(bucket: str) -> None:
    posture = check_bucket_posture(f"s3://{bucket}")
    assert not posture.secure
    assert not posture.encrypted
    assert posture.encryption is None
    assert not posture.public_access_blocked
    assert posture.missing_public_access_blocks == PUBLIC_ACCESS_BLOCK_FLAGS
    assert len(posture.findings) == 2
    assert posture.findings[0].startswith(f"default encryption is off for s3://{bucket}")
    assert posture.findings[1].startswith(f"public access is not blocked for s3://{bucket}")
    reported = json.loads(json.dumps(posture.to_dict()))
    assert reported["secure"] is False
    assert reported["findings"] == list(posture.findings)


def test_sse_s3_default_encryption_counts_as_encrypted(s3: S3Client, bucket: str) -> None:
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    block_public_access(s3, bucket)
    posture = check_bucket_posture(f"s3://{bucket}")
    assert (posture.encrypted, posture.encryption, posture.secure) == (True, "AES256", True)


def test_a_partial_block_names_the_flags_that_are_off(s3: S3Client, bucket: str) -> None:
    block_public_access(s3, bucket, flags=("BlockPublicAcls", "IgnorePublicAcls"))
    posture = check_bucket_posture(f"s3://{bucket}")
    assert not posture.public_access_blocked
    assert posture.missing_public_access_blocks == ("BlockPublicPolicy", "RestrictPublicBuckets")
    assert any("BlockPublicPolicy, RestrictPublicBuckets are off" in finding for finding in posture.findings)


def test_a_public_bucket_policy_is_reported(s3: S3Client, bucket: str) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    posture = check_bucket_posture(f"s3://{bucket}")
    assert posture.policy_public is True
    assert not posture.secure
    assert any("bucket policy" in finding and "everyone" in finding for finding in posture.findings)


@pytest.mark.parametrize(
    ("condition", "public"),
    [(None, True), ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, False)],
)
def test_without_policy_status_the_policy_document_is_read(
    s3: S3Client, bucket: str, proxy: S3Proxy, condition: dict[str, object] | None, public: bool
) -> None:
    # Some S3-compatible stores do not implement GetBucketPolicyStatus.
    statement: dict[str, object] = {
        "Effect": "Allow",
        "Principal": {"AWS": "*"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }
    if condition is not None:
        statement["Condition"] = condition
    s3.put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )
    proxy.faults.append(Fault("GET", query="policyStatus", status=501, code="NotImplemented"))
    posture = check_bucket_posture(f"s3://{bucket}", endpoint_url=proxy.endpoint, retry=FAST)
    assert posture.policy_public is public
    assert proxy.count("GET", "policy") == 1  # the document was read


def test_a_public_acl_is_reported(s3: S3Client, bucket: str) -> None:
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    posture = check_bucket_posture(f"s3://{bucket}")
    assert posture.acl_public is True
    assert not posture.secure
    assert any("grants READ to everyone" in finding for finding in posture.findings)


def test_a_setting_that_cannot_be_read_is_a_finding_not_a_pass(
    s3: S3Client, bucket: str, proxy: S3Proxy
) -> None:
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    block_public_access(s3, bucket)
    proxy.faults.append(Fault("GET", query="encryption", status=403, code="AccessDenied"))
    posture = check_bucket_posture(f"s3://{bucket}", endpoint_url=proxy.endpoint, retry=FAST)
    assert not posture.secure
    assert not posture.encrypted
    assert posture.findings == (
        f"could not read the default encryption of s3://{bucket} (AccessDenied); "
        "grant s3:GetEncryptionConfiguration to check it",
    )


def test_the_posture_of_a_missing_bucket_is_an_error(proxy: S3Proxy) -> None:
    with pytest.raises(StorageError, match="the bucket does not exist"):
        check_bucket_posture("s3://samd-no-such-bucket", endpoint_url=proxy.endpoint, retry=FAST)
    assert proxy.count("HEAD") == 1


def test_the_posture_check_is_for_s3_only() -> None:
    with pytest.raises(UsageError, match="s3:// buckets"):
        check_bucket_posture("https://models.example/m.samd")
