"""The SAMD envelope header: what an encrypted artifact says about itself (docs/format.md).

    preamble   magic (8 bytes) || format version (uint16 BE) || JSON length (uint32 BE)
    JSON       canonical UTF-8 JSON: cipher, segment size, salt, nonce prefix, attributes, wrapped key
    tag        HMAC-SHA256 over preamble || JSON, keyed from the data key (32 bytes)
    body       a Tink AES-GCM-HKDF streaming ciphertext (its own 40-byte header, then segments)

The header can be read without any key (`read_header`), but it is authenticated only once the data
key is unwrapped; nothing in it may be trusted before `verify_tag` passed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from samd.errors import IntegrityError, UsageError
from samd.keys.base import WrappedKey

MAGIC = b"\x89SAMD\r\n\x1a"
FORMAT_VERSION = 1
CIPHER = "AES256_GCM_HKDF_SHA256"
"""Tink's AES-GCM-HKDF streaming AEAD with AES-256 segment keys derived by HKDF-SHA256."""

PREAMBLE = struct.Struct(">8sHI")
TAG_SIZE = 32
MAX_JSON_SIZE = 64 * 1024

SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
STREAM_HEADER_SIZE = 1 + SALT_SIZE + NONCE_PREFIX_SIZE
"""Tink's stream header: its own length (one byte, 40), the HKDF salt, the nonce prefix."""
GCM_TAG_SIZE = 16

DEFAULT_SEGMENT_SIZE = 1 << 20
MIN_SEGMENT_SIZE = 256
MAX_SEGMENT_SIZE = 64 << 20

MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_VALUE = 4096
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")

_SEGMENTS_DOMAIN = b"samd-envelope/v1 segments\x00"
_HEADER_MAC_INFO = b"samd-envelope/v1 header-mac"
_DEK_CONTEXT_DOMAIN = b"samd-envelope/v1 dek\x00"
_DATA_KEY_ID_DOMAIN = b"samd-envelope/v1 data-key-id\x00"
_JSON_FIELDS = frozenset({"attributes", "cipher", "key", "nonce_prefix", "salt", "segment_size"})
_KEY_FIELDS = frozenset({"id", "provider", "version", "wrapped"})


@dataclass(frozen=True)
class Header:
    """The header of an encrypted artifact. It holds no secret: the data key in it is wrapped."""

    version: int
    cipher: str
    provider: str
    key_id: str
    key_version: str
    wrapped_key: bytes = field(repr=False)
    segment_size: int
    salt: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)
    attributes: Mapping[str, str]
    raw: bytes = field(repr=False)
    """The header as stored: preamble and JSON, the bytes the tag authenticates."""
    tag: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """Bytes from the start of the artifact to the start of the body (preamble, JSON and tag)."""
        return len(self.raw) + len(self.tag)

    @property
    def wrapped(self) -> WrappedKey:
        return WrappedKey(
            provider=self.provider,
            key_id=self.key_id,
            key_version=self.key_version,
            ciphertext=self.wrapped_key,
        )

    @property
    def stream_header(self) -> bytes:
        """The first bytes of the body (Tink's stream header) this header commits to."""
        return bytes([STREAM_HEADER_SIZE]) + self.salt + self.nonce_prefix

    @property
    def data_key_id(self) -> str:
        """Which data key encrypts the artifact, without revealing anything about it.

        A hash of the salt and nonce prefix: every encryption draws them together with a fresh data
        key, a rewrap keeps all three and `samd reencrypt` replaces all three. So the id changes exactly
        when the data key does. It is trustworthy once the artifact is opened with its key (the data
        key is bound to the salt and nonce prefix), like everything else in the header.
        """
        return hashlib.sha256(_DATA_KEY_ID_DOMAIN + self.salt + self.nonce_prefix).hexdigest()[:32]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view for `samd inspect` and logs."""
        return {
            "format_version": self.version,
            "cipher": self.cipher,
            "segment_size": self.segment_size,
            "key": {
                "provider": self.provider,
                "id": self.key_id,
                "version": self.key_version,
                "wrapped_key_sha256": hashlib.sha256(self.wrapped_key).hexdigest(),
                "data_key_id": self.data_key_id,
            },
            "attributes": dict(self.attributes),
            "header_size": self.size,
        }


def new_header(
    *,
    dek: bytes,
    wrapped: WrappedKey,
    segment_size: int,
    salt: bytes,
    nonce_prefix: bytes,
    attributes: Mapping[str, str],
) -> Header:
    """Build and tag the header for a data key and its wrapped form."""
    check_segment_size(segment_size)
    checked = check_attributes(attributes)
    if len(salt) != SALT_SIZE or len(nonce_prefix) != NONCE_PREFIX_SIZE:
        raise ValueError("salt must be 32 bytes and nonce prefix 7 bytes")
    document = {
        "attributes": dict(checked),
        "cipher": CIPHER,
        "key": {
            "id": wrapped.key_id,
            "provider": wrapped.provider,
            "version": wrapped.key_version,
            "wrapped": base64.b64encode(wrapped.ciphertext).decode(),
        },
        "nonce_prefix": nonce_prefix.hex(),
        "salt": salt.hex(),
        "segment_size": segment_size,
    }
    body = _canonical_json(document)
    if len(body) > MAX_JSON_SIZE:
        raise UsageError(
            f"the header would be {len(body)} bytes, over the {MAX_JSON_SIZE} limit: shorten attributes"
        )
    encoded = PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(body)) + body
    return Header(
        version=FORMAT_VERSION,
        cipher=CIPHER,
        provider=wrapped.provider,
        key_id=wrapped.key_id,
        key_version=wrapped.key_version,
        wrapped_key=wrapped.ciphertext,
        segment_size=segment_size,
        salt=salt,
        nonce_prefix=nonce_prefix,
        attributes=checked,
        raw=encoded,
        tag=compute_tag(dek, salt, encoded),
    )


def read_header(src: BinaryIO) -> Header:
    """Read and parse an artifact's header without any key (for `samd inspect`).

    Nothing in it is authenticated until the data key is unwrapped and `verify_tag` passes.
    `src` is left at the start of the body.
    """
    preamble = _read_exact(src, PREAMBLE.size)
    if not preamble:
        raise IntegrityError("the artifact is empty: there is not even a header")
    if not (preamble.startswith(MAGIC) or MAGIC.startswith(preamble)):
        raise IntegrityError(
            "this is not a SAMD encrypted artifact: it does not start with the SAMD magic bytes",
            hint="encrypt it with `samd encrypt`, or check that the whole file was downloaded",
        )
    if len(preamble) < PREAMBLE.size:
        raise IntegrityError("the artifact is truncated inside its header preamble")
    _, version, json_size = PREAMBLE.unpack(preamble)
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"unsupported SAMD envelope format version {version} (this SAMD reads version {FORMAT_VERSION})",
            hint="upgrade SAMD, or the header was altered",
        )
    if json_size > MAX_JSON_SIZE:
        raise IntegrityError(
            f"the header claims {json_size} bytes of JSON, over the {MAX_JSON_SIZE} limit: it was altered"
        )
    body = _read_exact(src, json_size)
    tag = _read_exact(src, TAG_SIZE)
    if len(body) < json_size or len(tag) < TAG_SIZE:
        raise IntegrityError("the artifact is truncated inside its header")
    return _parse_json(body, raw=preamble + body, tag=tag)


def dek_context(salt: bytes, nonce_prefix: bytes) -> bytes:
    """What the wrapped data key is bound to: the artifact's identity (its random salt and nonce prefix).

    A wrapped key copied into another artifact's header therefore fails to unwrap. The rest of the
    header is authenticated by the header tag, which rewrap recomputes.
    """
    return _DEK_CONTEXT_DOMAIN + salt + nonce_prefix


def segment_associated_data(header: Header) -> bytes:
    """Tink's associated data for the body: the parts of the header a rewrap never changes."""
    return associated_data_for(attributes=header.attributes, segment_size=header.segment_size)


def associated_data_for(*, attributes: Mapping[str, str], segment_size: int) -> bytes:
    stable = {"attributes": dict(attributes), "cipher": CIPHER, "segment_size": segment_size}
    return _SEGMENTS_DOMAIN + _canonical_json(stable)


def compute_tag(dek: bytes, salt: bytes, encoded: bytes) -> bytes:
    mac = hmac.HMAC(_header_mac_key(dek, salt), hashes.SHA256())
    mac.update(encoded)
    return mac.finalize()


def verify_tag(dek: bytes, header: Header) -> None:
    mac = hmac.HMAC(_header_mac_key(dek, header.salt), hashes.SHA256())
    mac.update(header.raw)
    try:
        mac.verify(header.tag)
    except InvalidSignature:
        raise IntegrityError(
            "the artifact header failed authentication: it was altered after encryption "
            "(attributes, segment size, key fields or the tag itself)",
            hint="do not use this artifact; fetch a fresh copy from its origin",
        ) from None


def check_segment_size(segment_size: int) -> None:
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise UsageError(
            f"segment size {segment_size} is out of range [{MIN_SEGMENT_SIZE}, {MAX_SEGMENT_SIZE}]",
            hint=f"the default is {DEFAULT_SEGMENT_SIZE} (1 MiB)",
        )


def check_attributes(attributes: Mapping[str, str]) -> Mapping[str, str]:
    """Validate caller attributes and return an immutable copy."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise UsageError(f"{len(attributes)} attributes given; at most {MAX_ATTRIBUTES} fit in a header")
    for name, value in attributes.items():
        if not isinstance(name, str) or not _ATTRIBUTE_NAME.fullmatch(name):
            raise UsageError(
                f"invalid attribute name {name!r}",
                hint="use 1-128 characters from letters, digits and . _ / - (starting with a letter or digit)",
            )
        if not isinstance(value, str) or len(value) > MAX_ATTRIBUTE_VALUE:
            raise UsageError(
                f"attribute {name!r} must be a string of at most {MAX_ATTRIBUTE_VALUE} characters"
            )
    return MappingProxyType(dict(sorted(attributes.items())))


def derive_segment_key(dek: bytes, salt: bytes, associated_data: bytes) -> bytes:
    """Tink's segment key: HKDF-SHA256(ikm = data key, salt, info = associated data), 32 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=associated_data).derive(dek)


def _header_mac_key(dek: bytes, salt: bytes) -> bytes:
    # Same HKDF as the segment key with a different info string: the two keys are independent.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HEADER_MAC_INFO).derive(dek)


def _canonical_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate field {name!r}")
        result[name] = value
    return result


def _parse_json(body: bytes, *, raw: bytes, tag: bytes) -> Header:
    def malformed(reason: str) -> IntegrityError:
        return IntegrityError(
            f"the artifact header is malformed ({reason}): it was altered or is not a SAMD header"
        )

    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise malformed(str(exc)) from None
    if not isinstance(document, dict) or set(document) != _JSON_FIELDS:
        raise malformed("unexpected set of fields")
    if document["cipher"] != CIPHER:
        raise malformed(f"unknown cipher {document['cipher']!r}")
    segment_size = document["segment_size"]
    if (
        not isinstance(segment_size, int)
        or isinstance(segment_size, bool)
        or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
    ):
        raise malformed(f"segment size {segment_size!r} out of range")
    key = document["key"]
    if (
        not isinstance(key, dict)
        or set(key) != _KEY_FIELDS
        or not all(isinstance(v, str) for v in key.values())
    ):
        raise malformed("bad key fields")
    if not key["provider"] or not key["id"] or not key["version"]:
        raise malformed("empty key fields")
    try:
        salt = bytes.fromhex(document["salt"])
        nonce_prefix = bytes.fromhex(document["nonce_prefix"])
        wrapped = base64.b64decode(key["wrapped"], validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise malformed("bad salt, nonce prefix or wrapped key encoding") from None
    if len(salt) != SALT_SIZE or len(nonce_prefix) != NONCE_PREFIX_SIZE or not wrapped:
        raise malformed("bad salt, nonce prefix or wrapped key length")
    attributes = document["attributes"]
    if not isinstance(attributes, dict):
        raise malformed("attributes are not an object")
    try:
        checked = check_attributes(attributes)
    except UsageError as exc:
        raise malformed(exc.message) from None
    return Header(
        version=FORMAT_VERSION,
        cipher=CIPHER,
        provider=key["provider"],
        key_id=key["id"],
        key_version=key["version"],
        wrapped_key=wrapped,
        segment_size=segment_size,
        salt=salt,
        nonce_prefix=nonce_prefix,
        attributes=checked,
        raw=raw,
        tag=tag,
    )


def _read_exact(src: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, fewer only at the end of the stream (streams may return short reads)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = src.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
