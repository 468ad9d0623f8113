"""S3 and S3-compatible object storage through boto3.

Retries are botocore's `standard` retry mode: transient failures only (throttling, 5xx, lost
connections, timeouts), exponential backoff with jitter, bounded attempts and a client-wide retry
quota, for every S3 request SAMD sends. Uploads are boto3's managed transfer (s3transfer): one PUT
when the data fits in a part, else a multipart upload whose parts go up in parallel and are retried
one by one, and which is aborted when anything fails.

What stays hand-written is the download (`S3ObjectSource` with `samd.storage.stream.ResumingReader`):
botocore's retries cover requests, not a body already being read, and s3transfer's download starts a
broken range again from its first byte; measured in docs/benchmarks.md, "S3 storage".
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import boto3
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    IncompleteReadError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ResponseStreamingError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from samd.errors import StorageError, UsageError
from samd.storage.defaults import NETWORK_TIMEOUT, S3_CONCURRENCY, S3_PART_SIZE
from samd.storage.guard import AddressPolicy, check_endpoint, guard_boto_client
from samd.storage.retry import DEFAULT_RETRY, RetryPolicy, TransientStorageError, gave_up
from samd.storage.stream import DEFAULT_BUFFER_SIZE, ArtifactReader, OpenedBody, ResumingReader
from samd.storage.uri import S3Location

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = NETWORK_TIMEOUT
DEFAULT_PART_SIZE = S3_PART_SIZE
MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 << 30
MAX_PARTS = 10_000
DEFAULT_CONCURRENCY = S3_CONCURRENCY
# Each part carries a checksum that S3 verifies on arrival, as boto3's own managed transfer does.
CHECKSUM_ALGORITHM: Literal["CRC32"] = "CRC32"

_SSE_ALIASES = {
    "aes256": "AES256",
    "sse-s3": "AES256",
    "aws:kms": "aws:kms",
    "sse-kms": "aws:kms",
    "aws:kms:dsse": "aws:kms:dsse",
}

# Error codes worth retrying: throttling and the service's own transient failures.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
    }
)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def normalize_sse(sse: str | None, kms_key_id: str | None) -> dict[str, str]:
    """The put arguments for server-side encryption: ``AES256``/``SSE-S3`` or ``aws:kms``/``SSE-KMS``."""
    if sse is None:
        if kms_key_id is not None:
            raise UsageError(
                "a KMS key id was given without server-side encryption", hint="pass sse='aws:kms' with it"
            )
        return {}
    algorithm = _SSE_ALIASES.get(sse.strip().lower())
    if algorithm is None:
        raise UsageError(
            f"unknown server-side encryption {sse!r}", hint="use AES256 (SSE-S3) or aws:kms (SSE-KMS)"
        )
    arguments = {"ServerSideEncryption": algorithm}
    if kms_key_id is not None:
        if algorithm == "AES256":
            raise UsageError("a KMS key id only applies to aws:kms encryption, not AES256")
        arguments["SSEKMSKeyId"] = kms_key_id
    return arguments


def resolve_endpoint(endpoint_url: str | None) -> str | None:
    """The S3 endpoint: the argument, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(f"invalid S3 endpoint {endpoint!r}", hint="write https://host[:port]")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        logger.warning("the S3 endpoint %s uses plain HTTP: requests are not encrypted in transit", endpoint)
    return endpoint


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    address_policy: AddressPolicy | None = None,
    endpoint_field: str = "the S3 endpoint",
    max_attempts: int = DEFAULT_RETRY.max_attempts,
) -> S3Client:
    """A client for ``endpoint_url`` (else the environment's endpoint, else AWS).

    Every request is tried at most ``max_attempts`` times (the first one included) by botocore's
    standard retry mode. With an ``address_policy``, an ``endpoint_url`` given here (a user's, not
    the environment's) is checked as a string at once, and every request the client sends is
    checked against it.
    """
    guarded = address_policy is not None and endpoint_url is not None
    if guarded:
        assert address_policy is not None  # noqa: S101 - for mypy
        assert endpoint_url is not None  # noqa: S101
        check_endpoint(endpoint_url, address_policy, field=endpoint_field)
    if max_attempts < 1:
        raise UsageError(f"max_attempts must be at least 1, not {max_attempts}")
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=timeout,
        read_timeout=timeout,
        max_pool_connections=DEFAULT_CONCURRENCY * 2,
    )
    try:
        client = boto3.session.Session().client(
            "s3", endpoint_url=resolve_endpoint(endpoint_url), region_name=region, config=config
        )
    except (BotoCoreError, ValueError) as error:
        raise UsageError(f"cannot set up the S3 client: {error}") from error
    if guarded:
        assert address_policy is not None  # noqa: S101 - for mypy
        guard_boto_client(client, address_policy, field=endpoint_field)
    return client


def s3_error(error: Exception, *, action: str, uri: str) -> StorageError:
    """Translate a boto3 failure into a `StorageError` that says what happened and what to do."""
    if isinstance(error, ClientError):
        return _client_error(error, action=action, uri=uri)
    if isinstance(error, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return StorageError(
            f"cannot {action} {uri}: no usable AWS credentials ({error})",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a workload identity",
        )
    if isinstance(error, NoRegionError):
        return StorageError(f"cannot {action} {uri}: no AWS region", hint="set AWS_REGION or pass a region")
    if isinstance(error, ParamValidationError):
        return StorageError(f"cannot {action} {uri}: {error}")
    if isinstance(error, SSLError):
        return StorageError(
            f"cannot {action} {uri}: TLS failed ({error})",
            hint="check the endpoint's certificate; set AWS_CA_BUNDLE for a private CA",
        )
    if isinstance(
        error,
        BotoConnectionError
        | ConnectionClosedError
        | ResponseStreamingError
        | IncompleteReadError
        | urllib3.exceptions.HTTPError
        | http.client.HTTPException
        | OSError,
    ):
        # BotoConnectionError covers endpoint connection failures and connect/read timeouts.
        return TransientStorageError(
            f"cannot {action} {uri}: connection failed ({error})",
            hint="check that the S3 endpoint is reachable; set it with AWS_ENDPOINT_URL "
            "(spec.artifact.endpoint for a SecureModel)",
        )
    return StorageError(f"cannot {action} {uri}: {error}")


def _client_error(error: ClientError, *, action: str, uri: str) -> StorageError:
    details = error.response.get("Error", {})
    code = str(details.get("Code", ""))
    message = str(details.get("Message", "")) or code
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if code in _TRANSIENT_CODES or status in (429, 500, 502, 503, 504):
        return TransientStorageError(f"cannot {action} {uri}: {code or status} ({message})")
    if code in ("NoSuchKey", "404", "NotFound"):
        return StorageError(f"cannot {action} {uri}: no such object", hint="check the bucket and key")
    if code == "NoSuchBucket":
        return StorageError(f"cannot {action} {uri}: the bucket does not exist", hint="check the bucket name")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return StorageError(
            f"cannot {action} {uri}: access denied",
            hint="check the credentials and that the IAM and bucket policies allow this action",
        )
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return StorageError(
            f"cannot {action} {uri}: the AWS credentials were rejected ({code})",
            hint="check or refresh the credentials",
        )
    if code in ("PreconditionFailed", "412"):
        return StorageError(
            f"cannot {action} {uri}: the object changed while it was being read",
            hint="someone overwrote it; try again",
        )
    if code.startswith("KMS.") or code == "KMSKeyNotAccessibleFault":
        return StorageError(
            f"cannot {action} {uri}: the KMS key for server-side encryption is unusable ({code}: {message})",
            hint="check the KMS key id and that the key policy lets this identity use it",
        )
    return StorageError(f"cannot {action} {uri}: {code or status} ({message})")


def final_s3_error(error: Exception, *, action: str, uri: str, client: S3Client) -> StorageError:
    """`s3_error` for a request botocore has already retried: a transient cause says how often it
    was tried and stays ``transient`` for the caller, but is not retried again here."""
    translated = s3_error(error, action=action, uri=uri)
    if not translated.transient:
        return translated
    attempts = _attempts(error, client)
    return gave_up(translated, attempts) if attempts > 1 else _final(translated)


def _attempts(error: Exception, client: S3Client) -> int:
    if isinstance(error, ClientError):
        retried = error.response.get("ResponseMetadata", {}).get("RetryAttempts")
        if isinstance(retried, int):
            return retried + 1
    retries = getattr(client.meta.config, "retries", None) or {}  # not in the type stubs
    configured = retries.get("total_max_attempts")
    return int(configured) if isinstance(configured, int) else 1


def _final(error: StorageError) -> StorageError:
    return StorageError(error.message, hint=error.hint, transient=True)


def call_s3(operation: Callable[[], Any], *, client: S3Client, action: str, uri: str) -> Any:
    """One S3 request through ``client`` (which retries it); failures become `StorageError`."""
    try:
        return operation()
    except (ClientError, BotoCoreError, urllib3.exceptions.HTTPError, OSError) as error:
        raise final_s3_error(error, action=action, uri=uri, client=client) from error


class _S3Body:
    def __init__(self, body: Any, uri: str) -> None:
        self._body = body
        self._uri = uri

    def readinto(self, buffer: memoryview, /) -> int:
        try:
            return int(self._body.readinto(buffer))
        except (BotoCoreError, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as error:
            raise TransientStorageError(f"the download of {self._uri} broke off ({error})") from error

    def close(self) -> None:
        self._body.close()


class S3ObjectSource:
    """One S3 object, opened at any offset, pinned by ETag to the version first read."""

    def __init__(self, client: S3Client, location: S3Location) -> None:
        self._client = client
        self._location = location
        self._etag: str | None = None

    @property
    def description(self) -> str:
        return str(self._location)

    @property
    def can_resume(self) -> bool:
        return self._etag is not None

    def open(self, offset: int) -> OpenedBody:
        uri = self.description
        arguments: dict[str, Any] = {"Bucket": self._location.bucket, "Key": self._location.key}
        if offset:
            arguments["Range"] = f"bytes={offset}-"
            if self._etag is not None:
                arguments["IfMatch"] = self._etag
        response = call_s3(
            lambda: self._client.get_object(**arguments), client=self._client, action="read", uri=uri
        )
        body = response["Body"]
        if not offset:
            self._etag = response.get("ETag")
            return OpenedBody(body=_S3Body(body, uri), start=0, total_size=response.get("ContentLength"))
        match = _CONTENT_RANGE.match(response.get("ContentRange", ""))
        if match is None:
            body.close()
            raise StorageError(
                f"resuming the download of {uri} at byte {offset}: the server ignored the range request"
            )
        total = None if match.group(3) == "*" else int(match.group(3))
        return OpenedBody(body=_S3Body(body, uri), start=int(match.group(1)), total_size=total)


def open_s3(
    location: S3Location,
    *,
    client: S3Client,
    policy: RetryPolicy = DEFAULT_RETRY,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
) -> ArtifactReader:
    raw = ResumingReader(S3ObjectSource(client, location), policy=policy)
    return ArtifactReader(raw, uri=str(location), size=raw.total_size, buffer_size=buffer_size)


def s3_size(location: S3Location, *, client: S3Client) -> int:
    response = call_s3(
        lambda: client.head_object(Bucket=location.bucket, Key=location.key),
        client=client,
        action="look up",
        uri=str(location),
    )
    return int(response["ContentLength"])


@dataclass(frozen=True)
class UploadSettings:
    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise UsageError(
                f"part size {self.part_size} is outside S3's limits ({MIN_PART_SIZE} to {MAX_PART_SIZE} bytes)"
            )
        if self.concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, not {self.concurrency}")


def put_s3(
    location: S3Location,
    src: BinaryIO,
    *,
    client: S3Client,
    sse: str | None = None,
    kms_key_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    settings: UploadSettings | None = None,
    size_hint: int | None = None,
) -> None:
    """Upload ``src`` with boto3's managed transfer: one PUT when it fits in a part, else a
    multipart upload of ``settings.concurrency`` parts at once.

    Every request (each part on its own) is retried by the client; when the upload fails anyway,
    s3transfer aborts the multipart upload, so no object appears and no parts are left behind
    (billed) in the bucket. Each part carries a CRC32 checksum that S3 verifies on arrival.
    ``src`` is read part by part (it may be a pipe): memory stays bounded by
    ``part_size * (concurrency + 1)``. ``size_hint`` (when the source size is known) grows the part
    size so that the object fits in S3's 10,000 parts. ``progress`` gets byte counts as data goes
    out; they add up to the object's size however often parts are resent (a count is negative when
    s3transfer rewinds a part to send it again).
    """
    settings = settings or UploadSettings()
    extra: dict[str, str] = {**normalize_sse(sse, kms_key_id), "ChecksumAlgorithm": CHECKSUM_ALGORITHM}
    uri = str(location)
    part_size = settings.part_size
    if size_hint is not None and size_hint > part_size * MAX_PARTS:
        part_size = min(MAX_PART_SIZE, math.ceil(size_hint / MAX_PARTS))
    config = TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=settings.concurrency,
        # The classic transfer sends every request through this client, so its address guard and
        # retry mode apply; the CRT one (chosen automatically on some hosts) has its own HTTP stack.
        preferred_transfer_client="classic",
    )
    config.max_in_memory_upload_chunks = settings.concurrency + 1
    try:
        client.upload_fileobj(
            # read() is all s3transfer needs of it
            _SourceReader(src, uri, part_size=part_size),  # type: ignore[arg-type]
            location.bucket,
            location.key,
            ExtraArgs=extra,
            Callback=progress,
            Config=config,
        )
    except (ClientError, BotoCoreError, urllib3.exceptions.HTTPError, OSError) as error:
        raise final_s3_error(error, action="write", uri=uri, client=client) from error
    logger.debug("uploaded %s", uri)


class _SourceReader:
    """``src`` as s3transfer sees it: read-only and not seekable (so it is read once, part by part,
    whatever ``src`` is), with read errors named as SAMD's, and refused before it outgrows S3's
    10,000 parts (which S3 would refuse only at part 10,001, with a less helpful message)."""

    def __init__(self, src: BinaryIO, uri: str, *, part_size: int) -> None:
        self._src = src
        self._uri = uri
        self._part_size = part_size
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._read_fully(size)
        self._read += len(data)
        if self._read > self._part_size * MAX_PARTS:
            raise StorageError(
                f"cannot write {self._uri}: the data needs more than {MAX_PARTS} parts of "
                f"{self._part_size} bytes",
                hint="use a larger part size",
            )
        return data

    def _read_fully(self, size: int) -> bytes:
        chunks: list[bytes] = []
        remaining = size
        try:
            while remaining:  # a pipe may return less than asked before its end
                chunk = self._src.read(remaining)
                if not chunk:
                    break
                chunks.append(chunk)
                if remaining > 0:
                    remaining -= len(chunk)
        except OSError as error:
            raise StorageError(
                f"reading the data to write to {self._uri} failed: {error.strerror or error}"
            ) from error
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False
