"""Print the test vectors of docs/format.md (run: .venv/bin/python -m tests.unit.vectors.make_format_vectors).

Every input is a fixed byte pattern, so the output is the same on every run; paste it into
docs/format.md when the format changes. Fixed key material is for vectors only: production code
always draws fresh random keys, salts and nonces.
"""

from __future__ import annotations

import io
import json
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from samd.envelope.header import dek_context, derive_segment_key, segment_associated_data
from samd.envelope.stream import _encrypt_with_material
from samd.keys.base import WrappedKey
from samd.keys.local import _wrap_aad

KEK = bytes(range(0x00, 0x20))
DEK = bytes(range(0x20, 0x40))
SALT = bytes(range(0x40, 0x60))
NONCE_PREFIX = bytes(range(0x60, 0x67))
WRAP_NONCE = bytes(range(0x70, 0x7C))
KEY_ID = "vector-kek"
CREATED = "2026-01-01T00:00:00Z"

CASES = [
    ("empty", b"", 256, {"kind": "file", "name": "empty.bin"}),
    ("one-segment", b"hello, SAMD", 256, {"kind": "file", "name": "hello.txt"}),
    ("three-segments", bytes(i % 251 for i in range(600)), 256, {"kind": "tar"}),
]


def chunked(text: str, width: int = 96) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


def vector(name: str, plaintext: bytes, segment_size: int, attributes: dict[str, str]) -> dict[str, object]:
    context = dek_context(SALT, NONCE_PREFIX)
    wrapped_bytes = WRAP_NONCE + AESGCM(KEK).encrypt(WRAP_NONCE, DEK, _wrap_aad(KEY_ID, "1", context))
    wrapped = WrappedKey(provider="local", key_id=KEY_ID, key_version="1", ciphertext=wrapped_bytes)
    out = io.BytesIO()
    header = _encrypt_with_material(
        io.BytesIO(plaintext),
        out,
        wrapped=wrapped,
        dek=DEK,
        salt=SALT,
        nonce_prefix=NONCE_PREFIX,
        attributes=attributes,
        segment_size=segment_size,
        progress=None,
    )
    artifact = out.getvalue()
    return {
        "name": name,
        "kek": KEK.hex(),
        "key_id": KEY_ID,
        "key_created": CREATED,
        "dek": DEK.hex(),
        "wrap_nonce": WRAP_NONCE.hex(),
        "salt": SALT.hex(),
        "nonce_prefix": NONCE_PREFIX.hex(),
        "segment_size": segment_size,
        "attributes": attributes,
        "plaintext": chunked(plaintext.hex()),
        "wrapped_key": wrapped_bytes.hex(),
        "segment_key": derive_segment_key(DEK, SALT, segment_associated_data(header)).hex(),
        "header_size": header.size,
        "artifact": chunked(artifact.hex()),
    }


def main() -> None:
    for name, plaintext, segment_size, attributes in CASES:
        sys.stdout.write(f"<!-- vector:{name} -->\n```json\n")
        sys.stdout.write(json.dumps(vector(name, plaintext, segment_size, attributes), indent=2))
        sys.stdout.write("\n```\n\n")


if __name__ == "__main__":
    main()
