"""Artifact locations: parse a URI (or a plain path) once into a typed value.

Supported: plain paths and ``file://`` URIs, ``s3://bucket/key`` and ``https://`` URLs
(``http://`` only when the caller explicitly allows it).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from samd.errors import UsageError

SUPPORTED_SCHEMES = ("file://", "s3://", "https://")

# S3 bucket naming rules (general purpose buckets): 3-63 characters of lowercase letters,
# digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class LocalPath:
    """A file on a local (or mounted) filesystem."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class S3Location:
    """A bucket, and optionally a key in it."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


@dataclass(frozen=True)
class HttpUrl:
    """An ``https://`` (or explicitly allowed ``http://``) URL."""

    url: str

    @property
    def secure(self) -> bool:
        return self.url.startswith("https://")

    def __str__(self) -> str:
        return redact_url(self.url)


ArtifactLocation = LocalPath | S3Location | HttpUrl


def redact_url(url: str) -> str:
    """The URL without user info or query string, safe to log (presigned URLs carry signatures)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    query = "?..." if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query


def parse_artifact_uri(uri: str, *, allow_http: bool = False, require_key: bool = True) -> ArtifactLocation:
    """Parse ``uri`` into a location, or raise `UsageError` saying what is wrong with it.

    ``require_key=False`` accepts ``s3://bucket`` without a key (for bucket-level checks).
    """
    if not uri or not uri.strip():
        raise UsageError(
            "the artifact URI is empty", hint=f"give a path or a URI: {', '.join(SUPPORTED_SCHEMES)}"
        )
    if "\x00" in uri:
        raise UsageError("the artifact URI contains a NUL character")
    match = _SCHEME.match(uri)
    if match is None:
        return LocalPath(Path(uri))
    scheme = match.group(1).lower()
    if scheme == "file":
        return _parse_file_uri(uri)
    if scheme == "s3":
        return _parse_s3_uri(uri, require_key=require_key)
    if scheme == "https":
        return _parse_http_url(uri)
    if scheme == "http":
        if not allow_http:
            raise UsageError(
                f"refusing plain http:// for {redact_url(uri)}: the artifact would travel unencrypted "
                "and unauthenticated",
                hint="use an https:// URL, or allow plain HTTP explicitly (only on a trusted network)",
            )
        return _parse_http_url(uri)
    raise UsageError(
        f"unsupported storage scheme {scheme}:// in {redact_url(uri)}",
        hint=f"supported: plain paths, {', '.join(SUPPORTED_SCHEMES)}",
    )


def _parse_file_uri(uri: str) -> LocalPath:
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(
            f"file URI {uri!r} names the host {parts.netloc!r}; only local files are supported",
            hint="write file:///absolute/path (three slashes)",
        )
    if parts.query or parts.fragment:
        raise UsageError(
            f"file URI {uri!r} has a query or fragment", hint="percent-encode '?' and '#' in paths"
        )
    path = urllib.parse.unquote(parts.path)
    if not path:
        raise UsageError(f"file URI {uri!r} has no path", hint="write file:///absolute/path")
    return LocalPath(Path(path))


def _parse_s3_uri(uri: str, *, require_key: bool) -> S3Location:
    # Not urlsplit: S3 keys may legally contain '?' and '#', which are not a query or fragment here.
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UsageError(f"S3 URI {uri!r} has no bucket", hint="write s3://bucket/key")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise UsageError(
            f"S3 URI {uri!r}: {bucket!r} is not a valid bucket name",
            hint="bucket names are 3-63 lowercase letters, digits, dots and hyphens",
        )
    if require_key and not key:
        raise UsageError(f"S3 URI {uri!r} names a bucket but no object key", hint="write s3://bucket/key")
    if len(key.encode()) > 1024:
        raise UsageError(f"S3 URI {uri[:80]!r}...: the key is longer than S3's 1024-byte limit")
    return S3Location(bucket=bucket, key=key)


def _parse_http_url(uri: str) -> HttpUrl:
    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname:
        raise UsageError(f"URL {redact_url(uri)!r} has no host", hint="write https://host/path")
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"URL {redact_url(uri)!r} carries credentials in it; they would end up in logs and process lists",
            hint="use a presigned URL instead",
        )
    try:
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise UsageError(f"URL {redact_url(uri)!r} has an invalid port") from None
    return HttpUrl(url=uri)
