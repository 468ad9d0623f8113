"""One entry point per operation; the URI's scheme picks the backend."""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from samd.errors import UsageError
from samd.storage.defaults import NETWORK_TIMEOUT, S3_CONCURRENCY, S3_PART_SIZE
from samd.storage.local import local_size, open_local, put_local
from samd.storage.retry import DEFAULT_RETRY, RetryPolicy
from samd.storage.stream import DEFAULT_BUFFER_SIZE, ArtifactReader
from samd.storage.uri import HttpUrl, LocalPath, S3Location, parse_artifact_uri

if TYPE_CHECKING:
    from samd.storage.guard import AddressPolicy

# The remote backends are imported when a URI of theirs is used: a fetch from a local file (the
# init container's common case) then never loads boto3, botocore or the TLS stack.

DEFAULT_TIMEOUT = NETWORK_TIMEOUT


@contextlib.contextmanager
def open_artifact(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    ca_bundle: Path | None = None,
    allow_http: bool = False,
    retry: RetryPolicy | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    address_policy: AddressPolicy | None = None,
    field: str = "the artifact URI",
) -> Iterator[ArtifactReader]:
    """Open an artifact for streaming reads, in constant memory.

    ``uri`` is a path, ``file://``, ``s3://bucket/key`` or ``https://`` (``http://`` only with
    ``allow_http``). ``endpoint_url`` and ``region`` apply to S3 (the endpoint defaults to
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL); ``ca_bundle`` replaces the system trust store for
    HTTPS. Opening retries transient failures; a remote download that breaks off resumes from the
    byte where it stopped. Every failure is a `StorageError` (or `UsageError` for a bad URI).

    With an ``address_policy`` (a privileged reader opening what a user named; ``field`` says where
    the user named it) the URI, the endpoint and every connection are checked against it, and a
    refusal is a `URIRefusedError`; ``allow_http`` is then the policy's to decide.
    """
    if address_policy is not None:
        from samd.storage.guard import check_uri  # noqa: PLC0415 - the CLI's local fetch never needs it

        check_uri(uri, address_policy, field=field)
        allow_http = True  # check_uri refused any http:// the policy does not allow
    location = parse_artifact_uri(uri, allow_http=allow_http)
    policy = retry or DEFAULT_RETRY
    reader: ArtifactReader
    if isinstance(location, LocalPath):
        if address_policy is not None:
            from samd.storage.guard import check_local_path  # noqa: PLC0415

            location = LocalPath(check_local_path(str(location.path), address_policy, field=field))
        reader = open_local(location, buffer_size=buffer_size)
    elif isinstance(location, S3Location):
        from samd.storage.s3 import make_s3_client, open_s3  # noqa: PLC0415 - see the imports

        client = make_s3_client(
            endpoint_url=endpoint_url,
            region=region,
            timeout=timeout,
            address_policy=address_policy,
            max_attempts=policy.max_attempts,
        )
        reader = open_s3(location, client=client, policy=policy, buffer_size=buffer_size)
    else:
        from samd.storage.https import HttpClient, open_https  # noqa: PLC0415

        http = HttpClient(
            ca_bundle=ca_bundle, allow_http=allow_http, timeout=timeout, address_policy=address_policy
        )
        reader = open_https(location, client=http, policy=policy, buffer_size=buffer_size)
    with reader:
        yield reader


def put_artifact(
    uri: str,
    src: BinaryIO,
    *,
    sse: str | None = None,
    kms_key_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    part_size: int = S3_PART_SIZE,
    concurrency: int = S3_CONCURRENCY,
    address_policy: AddressPolicy | None = None,
    field: str = "the artifact URI",
) -> None:
    """Write everything ``src`` yields to ``uri``, all or nothing.

    Local files are written atomically (temporary file, fsync, rename). S3 objects are uploaded
    by boto3's managed transfer: in one request or, past ``part_size``, as a multipart upload of
    ``concurrency`` parts at once (aborted on failure, so no partial object appears; each request
    tried at most ``retry.max_attempts`` times by botocore's standard retry mode), with optional
    server-side encryption: ``sse`` is ``AES256``
    (``SSE-S3``) or ``aws:kms`` (``SSE-KMS``, with an optional ``kms_key_id``). ``progress`` is
    called with the number of bytes each time a chunk is stored. HTTPS is read only.
    ``address_policy`` and ``field`` are as for `open_artifact`.
    """
    if address_policy is not None:
        from samd.storage.guard import check_uri  # noqa: PLC0415

        check_uri(uri, address_policy, field=field)
    location = parse_artifact_uri(uri)
    if isinstance(location, HttpUrl):
        raise UsageError(
            f"cannot write to {location}: HTTP(S) storage is read only in SAMD",
            hint="upload to s3:// (or a file) and serve it over HTTPS from there",
        )
    if isinstance(location, LocalPath):
        if sse is not None or kms_key_id is not None:
            raise UsageError(
                f"server-side encryption applies to s3:// only, not to the local file {location}",
                hint="the artifact itself is already encrypted by samd encrypt",
            )
        if address_policy is not None:
            from samd.storage.guard import check_local_path  # noqa: PLC0415

            location = LocalPath(check_local_path(str(location.path), address_policy, field=field))
        put_local(location, src, progress=progress)
        return
    from samd.storage.s3 import UploadSettings, make_s3_client, normalize_sse, put_s3  # noqa: PLC0415

    normalize_sse(sse, kms_key_id)  # reject bad options before any connection is made
    settings = UploadSettings(part_size=part_size, concurrency=concurrency)
    client = make_s3_client(
        endpoint_url=endpoint_url,
        region=region,
        timeout=timeout,
        address_policy=address_policy,
        max_attempts=(retry or DEFAULT_RETRY).max_attempts,
    )
    put_s3(
        location,
        src,
        client=client,
        sse=sse,
        kms_key_id=kms_key_id,
        progress=progress,
        settings=settings,
        size_hint=_remaining_size(src),
    )


def artifact_size(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    ca_bundle: Path | None = None,
    allow_http: bool = False,
    retry: RetryPolicy | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> int | None:
    """The artifact's size in bytes; None when the storage does not say (a pipe, an HTTP server
    without Content-Length). Raises `StorageError` when it does not exist."""
    location = parse_artifact_uri(uri, allow_http=allow_http)
    policy = retry or DEFAULT_RETRY
    if isinstance(location, LocalPath):
        return local_size(location)
    if isinstance(location, S3Location):
        from samd.storage.s3 import make_s3_client, s3_size  # noqa: PLC0415

        client = make_s3_client(
            endpoint_url=endpoint_url, region=region, timeout=timeout, max_attempts=policy.max_attempts
        )
        return s3_size(location, client=client)
    from samd.storage.https import HttpClient, https_size  # noqa: PLC0415

    http = HttpClient(ca_bundle=ca_bundle, allow_http=allow_http, timeout=timeout)
    return https_size(location, client=http, policy=policy)


def _remaining_size(src: BinaryIO) -> int | None:
    try:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(info.st_size - src.tell(), 0)
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None
