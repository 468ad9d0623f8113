"""Streaming envelope encryption: a fresh data key per artifact, Tink's AES-GCM-HKDF streaming body,
an authenticated versioned header carrying the wrapped data key (docs/format.md)."""

from samd.envelope.files import (
    ReencryptResult,
    RewrapResult,
    atomic_output,
    body_offset,
    decrypt_file,
    encrypt_file,
    reencrypt_file,
    reencrypt_stream,
    rewrap_header,
)
from samd.envelope.header import (
    CIPHER,
    DEFAULT_SEGMENT_SIZE,
    FORMAT_VERSION,
    MAGIC,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    Header,
    read_header,
)
from samd.envelope.stream import EnvelopeReader, Progress, decrypt_segments, decrypt_stream, encrypt_stream

__all__ = [
    "CIPHER",
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "EnvelopeReader",
    "Header",
    "Progress",
    "ReencryptResult",
    "RewrapResult",
    "atomic_output",
    "body_offset",
    "decrypt_file",
    "decrypt_segments",
    "decrypt_stream",
    "encrypt_file",
    "encrypt_stream",
    "read_header",
    "reencrypt_file",
    "reencrypt_stream",
    "rewrap_header",
]
