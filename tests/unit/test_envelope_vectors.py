"""The test vectors published in docs/format.md hold, recomputed here from the spec's own steps.

The body and the header tag are recomputed with `cryptography` primitives following the document
(not through SAMD's stream code), then SAMD must decrypt each vector and, given the same fixed key
material through its internal deterministic hook, reproduce it byte for byte.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from samd.envelope import decrypt_segments, read_header
from samd.envelope.stream import _encrypt_with_material
from samd.keys import LocalKeyProvider
from samd.keys.base import WrappedKey

pytestmark = pytest.mark.unit

FORMAT_DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"
VECTOR_BLOCK = re.compile(r"<!-- vector:(?P<name>[\w-]+) -->\s*```json\n(?P<body>.*?)\n```", re.DOTALL)


def load_vectors() -> list[dict[str, Any]]:
    vectors = [json.loads(match["body"]) for match in VECTOR_BLOCK.finditer(FORMAT_DOC.read_text())]
    assert len(vectors) >= 3, f"expected the test vectors in {FORMAT_DOC}"
    return vectors


VECTORS = load_vectors()


def hexjoin(lines: list[str]) -> bytes:
    return bytes.fromhex("".join(lines))


def keyset_for(vector: dict[str, Any]) -> LocalKeyProvider:
    document = {
        "format": "samd.local-keyset/v1",
        "key_id": vector["key_id"],
        "primary_version": 1,
        "versions": [
            {
                "version": 1,
                "created": vector["key_created"],
                "material": base64.b64encode(bytes.fromhex(vector["kek"])).decode(),
            }
        ],
    }
    return LocalKeyProvider.from_bytes(json.dumps(document).encode(), origin="test vector keyset")


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def length_prefixed(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_follows_the_documented_construction(vector: dict[str, Any]) -> None:
    dek, salt, prefix = (bytes.fromhex(vector[k]) for k in ("dek", "salt", "nonce_prefix"))
    plaintext, artifact = hexjoin(vector["plaintext"]), hexjoin(vector["artifact"])
    segment_size, header_size = vector["segment_size"], vector["header_size"]

    # Wrapped key: local AES-256-GCM under the KEK, bound to key id, version and artifact identity.
    dek_context = b"samd-envelope/v1 dek\x00" + salt + prefix
    wrap_aad = b"samd.local-wrap/v1\x00" + length_prefixed(vector["key_id"].encode(), b"1", dek_context)
    wrap_nonce = bytes.fromhex(vector["wrap_nonce"])
    expected_wrapped = wrap_nonce + AESGCM(bytes.fromhex(vector["kek"])).encrypt(wrap_nonce, dek, wrap_aad)
    assert bytes.fromhex(vector["wrapped_key"]) == expected_wrapped

    # Header: preamble, canonical JSON, HMAC-SHA256 tag.
    document = {
        "attributes": vector["attributes"],
        "cipher": "AES256_GCM_HKDF_SHA256",
        "key": {
            "id": vector["key_id"],
            "provider": "local",
            "version": "1",
            "wrapped": base64.b64encode(expected_wrapped).decode(),
        },
        "nonce_prefix": prefix.hex(),
        "salt": salt.hex(),
        "segment_size": segment_size,
    }
    header_json = canonical(document)
    encoded = b"\x89SAMD\r\n\x1a" + struct.pack(">HI", 1, len(header_json)) + header_json
    mac_key = HKDF(hashes.SHA256(), 32, salt, b"samd-envelope/v1 header-mac").derive(dek)
    mac = hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(encoded)
    assert header_size == len(encoded) + 32
    assert artifact[:header_size] == encoded + mac.finalize()

    # Body: Tink AES-GCM-HKDF streaming.
    stable = {
        "attributes": vector["attributes"],
        "cipher": "AES256_GCM_HKDF_SHA256",
        "segment_size": segment_size,
    }
    associated_data = b"samd-envelope/v1 segments\x00" + canonical(stable)
    segment_key = HKDF(hashes.SHA256(), 32, salt, associated_data).derive(dek)
    assert segment_key.hex() == vector["segment_key"]
    pieces = [plaintext[: segment_size - 40]]
    rest = plaintext[segment_size - 40 :]
    pieces += [rest[i : i + segment_size] for i in range(0, len(rest), segment_size)]
    body = bytes([40]) + salt + prefix
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        nonce = prefix + struct.pack(">I", index) + bytes([last])
        body += AESGCM(segment_key).encrypt(nonce, piece, None)
    assert artifact[header_size:] == body


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_samd_decrypts_the_vector(vector: dict[str, Any]) -> None:
    artifact = hexjoin(vector["artifact"])
    keyset = keyset_for(vector)
    assert b"".join(decrypt_segments(io.BytesIO(artifact), keyset)) == hexjoin(vector["plaintext"])
    header = read_header(io.BytesIO(artifact))
    assert dict(header.attributes) == vector["attributes"]
    assert (header.key_id, header.key_version, header.segment_size) == (
        vector["key_id"],
        "1",
        vector["segment_size"],
    )


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_samd_reproduces_the_vector_from_fixed_material(vector: dict[str, Any]) -> None:
    out = io.BytesIO()
    _encrypt_with_material(
        io.BytesIO(hexjoin(vector["plaintext"])),
        out,
        wrapped=WrappedKey("local", vector["key_id"], "1", bytes.fromhex(vector["wrapped_key"])),
        dek=bytes.fromhex(vector["dek"]),
        salt=bytes.fromhex(vector["salt"]),
        nonce_prefix=bytes.fromhex(vector["nonce_prefix"]),
        attributes=vector["attributes"],
        segment_size=vector["segment_size"],
        progress=None,
    )
    assert out.getvalue() == hexjoin(vector["artifact"])
