"""The body of a SAMD artifact is Tink's AES-GCM-HKDF streaming format, in both directions.

Tink decrypts what SAMD encrypts (given the data key and the associated data the header defines),
and SAMD decrypts a Tink ciphertext once it is given a SAMD header.
"""

from __future__ import annotations

import io
import os

import pytest
import tink
from tink import secret_key_access, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

from samd.envelope import DEFAULT_SEGMENT_SIZE, decrypt_segments, encrypt_stream
from samd.envelope.header import (
    SALT_SIZE,
    STREAM_HEADER_SIZE,
    associated_data_for,
    dek_context,
    new_header,
    segment_associated_data,
)
from samd.envelope.stream import open_artifact
from samd.keys import LocalKeyProvider

pytestmark = pytest.mark.unit

SEGMENT = 256
FIRST = SEGMENT - STREAM_HEADER_SIZE
SIZES = [0, 1, FIRST - 1, FIRST, FIRST + 1, FIRST + SEGMENT, FIRST + 4 * SEGMENT + 17]


class KeepOpen(io.BytesIO):
    """Tink closes its destination when the stream closes; keep the bytes readable."""

    def close(self) -> None:
        pass


def tink_primitive(dek: bytes, segment_size: int) -> streaming_aead.StreamingAead:
    streaming_aead.register()
    key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(
        version=0,
        params=aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
            ciphertext_segment_size=segment_size + 16, derived_key_size=32, hkdf_hash_type=common_pb2.SHA256
        ),
        key_value=dek,
    )
    keyset = tink_pb2.Keyset(
        primary_key_id=1,
        key=[
            tink_pb2.Keyset.Key(
                key_data=tink_pb2.KeyData(
                    type_url="type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
                    value=key.SerializeToString(),
                    key_material_type=tink_pb2.KeyData.SYMMETRIC,
                ),
                status=tink_pb2.ENABLED,
                key_id=1,
                output_prefix_type=tink_pb2.RAW,
            )
        ],
    )
    handle = tink.proto_keyset_format.parse(keyset.SerializeToString(), secret_key_access.TOKEN)
    return handle.primitive(streaming_aead.StreamingAead)


@pytest.fixture
def provider() -> LocalKeyProvider:
    return LocalKeyProvider.generate("tink-interop")


@pytest.mark.parametrize("size", SIZES)
def test_tink_decrypts_what_samd_encrypts(provider: LocalKeyProvider, size: int) -> None:
    plaintext = os.urandom(size)
    artifact = io.BytesIO()
    encrypt_stream(
        io.BytesIO(plaintext), artifact, provider, attributes={"kind": "file"}, segment_size=SEGMENT
    )
    source = io.BytesIO(artifact.getvalue())
    header, dek = open_artifact(source, provider)
    body = artifact.getvalue()[header.size :]

    primitive = tink_primitive(dek, SEGMENT)
    with primitive.new_decrypting_stream(io.BytesIO(body), segment_associated_data(header)) as stream:
        assert stream.read() == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_samd_decrypts_a_tink_ciphertext_given_a_samd_header(provider: LocalKeyProvider, size: int) -> None:
    plaintext = os.urandom(size)
    dek = os.urandom(32)
    attributes = {"kind": "tar", "name": "model"}
    # The associated data depends only on the fields a header keeps across rewraps, so it is known
    # before Tink picks the salt and nonce prefix.
    associated_data = associated_data_for(attributes=attributes, segment_size=SEGMENT)
    tink_output = KeepOpen()
    with tink_primitive(dek, SEGMENT).new_encrypting_stream(tink_output, associated_data) as stream:
        stream.write(plaintext)
    ciphertext = tink_output.getvalue()
    salt, nonce_prefix = ciphertext[1 : 1 + SALT_SIZE], ciphertext[1 + SALT_SIZE : STREAM_HEADER_SIZE]

    wrapped = provider.wrap(dek, dek_context(salt, nonce_prefix))
    header = new_header(
        dek=dek,
        wrapped=wrapped,
        segment_size=SEGMENT,
        salt=salt,
        nonce_prefix=nonce_prefix,
        attributes=attributes,
    )
    artifact = header.raw + header.tag + ciphertext

    assert b"".join(decrypt_segments(io.BytesIO(artifact), provider)) == plaintext


def test_tink_interop_with_the_default_segment_size(provider: LocalKeyProvider) -> None:
    plaintext = os.urandom(2 * DEFAULT_SEGMENT_SIZE + 99)
    artifact = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), artifact, provider)
    header, dek = open_artifact(io.BytesIO(artifact.getvalue()), provider)
    primitive = tink_primitive(dek, DEFAULT_SEGMENT_SIZE)
    body = artifact.getvalue()[header.size :]
    with primitive.new_decrypting_stream(io.BytesIO(body), segment_associated_data(header)) as stream:
        assert stream.read() == plaintext


def test_tink_refuses_the_body_under_other_associated_data(provider: LocalKeyProvider) -> None:
    """The header fields in the associated data really are bound to the body."""
    artifact = io.BytesIO()
    encrypt_stream(
        io.BytesIO(b"weights" * 100), artifact, provider, attributes={"kind": "file"}, segment_size=SEGMENT
    )
    header, dek = open_artifact(io.BytesIO(artifact.getvalue()), provider)
    body = artifact.getvalue()[header.size :]
    with (
        pytest.raises(tink.TinkError),
        tink_primitive(dek, SEGMENT).new_decrypting_stream(
            io.BytesIO(body), b"other associated data"
        ) as stream,
    ):
        stream.read()
