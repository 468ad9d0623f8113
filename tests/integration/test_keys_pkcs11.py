"""PKCS#11 key provider against a real SoftHSM2 token."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import PyKCS11
import pytest

from samd.envelope import (
    decrypt_file,
    decrypt_segments,
    encrypt_file,
    encrypt_stream,
    read_header,
    rewrap_header,
)
from samd.errors import KeyProviderError
from samd.keys import provider_from_uri
from samd.keys.hsm import Pkcs11KeyProvider
from tests.support.softhsm import SoftHSMToken

pytestmark = pytest.mark.integration

LABEL = "samd-kek"
CONTEXT = b"artifact identity"
DEK = os.urandom(32)


def delete_key(token: SoftHSMToken, label: str) -> None:
    subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            token.module,
            "--login",
            "--pin",
            token.pin,
            "--token-label",
            token.token_label,
            "--delete-object",
            "--type",
            "secrkey",
            "--label",
            label,
        ],
        check=True,
        capture_output=True,
        env=token.env(),
    )


@pytest.fixture
def token(softhsm: SoftHSMToken) -> SoftHSMToken:
    softhsm.generate_aes_key(LABEL)
    return softhsm


@pytest.fixture
def provider(token: SoftHSMToken) -> Iterator[Pkcs11KeyProvider]:
    with Pkcs11KeyProvider(
        module=token.module, token_label=token.token_label, key_label=LABEL, pin=token.pin
    ) as hsm:
        yield hsm


def test_wrap_and_unwrap_on_the_token(provider: Pkcs11KeyProvider, token: SoftHSMToken) -> None:
    wrapped = provider.wrap(DEK, CONTEXT)
    assert (wrapped.provider, wrapped.key_version) == ("pkcs11", "1")
    assert wrapped.key_id == f"pkcs11:token={token.token_label};object={LABEL}"
    assert DEK not in wrapped.ciphertext
    assert provider.unwrap(wrapped, CONTEXT) == DEK


def test_unwrap_needs_the_same_context(provider: Pkcs11KeyProvider) -> None:
    wrapped = provider.wrap(DEK, CONTEXT)
    with pytest.raises(KeyProviderError, match="cannot unwrap this data key"):
        provider.unwrap(wrapped, b"another artifact")


def test_encrypt_and_decrypt_an_artifact_with_the_hsm(provider: Pkcs11KeyProvider) -> None:
    data = os.urandom(200_000)
    artifact = io.BytesIO()
    encrypt_stream(io.BytesIO(data), artifact, provider, attributes={"kind": "file"}, segment_size=8192)
    assert b"".join(decrypt_segments(io.BytesIO(artifact.getvalue()), provider)) == data


def test_a_uri_with_the_pin_in_the_environment(token: SoftHSMToken, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMD_PKCS11_PIN", token.pin)
    uri = f"pkcs11:token={token.token_label};object={LABEL}?module-path={token.module}"
    with provider_from_uri(uri) as from_uri:
        assert from_uri.kind == "pkcs11"
        assert from_uri.unwrap(from_uri.wrap(DEK, CONTEXT), CONTEXT) == DEK


def test_rotation_creates_a_new_key_object_and_rewrap_moves_old_artifacts(
    provider: Pkcs11KeyProvider, tmp_path: Path
) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(50_000))
    old = tmp_path / "old.samd"
    encrypt_file(model, old, provider, segment_size=4096)
    content = old.read_bytes()
    body_before = content[read_header(io.BytesIO(content)).size :]

    info = provider.rotate()
    assert (info.version, info.primary) == ("2", True)
    assert [(v.version, v.primary) for v in provider.describe().versions] == [("1", False), ("2", True)]

    new = tmp_path / "new.samd"
    encrypt_file(model, new, provider)
    assert read_header(io.BytesIO(new.read_bytes())).key_version == "2"
    decrypt_file(old, tmp_path / "old.out", provider)
    assert (tmp_path / "old.out").read_bytes() == model.read_bytes()

    result = rewrap_header(old, provider)
    assert (result.previous.key_version, result.header.key_version) == ("1", "2")
    content = old.read_bytes()
    assert content[read_header(io.BytesIO(content)).size :] == body_before
    decrypt_file(old, tmp_path / "rewrapped.out", provider)
    assert (tmp_path / "rewrapped.out").read_bytes() == model.read_bytes()


def test_an_artifact_whose_key_version_is_gone_is_refused(
    provider: Pkcs11KeyProvider, token: SoftHSMToken
) -> None:
    provider.rotate()
    artifact = io.BytesIO()
    encrypt_stream(io.BytesIO(b"weights"), artifact, provider)
    delete_key(token, f"{LABEL}.v2")
    with pytest.raises(KeyProviderError, match=r"has no version '2' on the token \(versions: 1\)"):
        decrypt_segments(io.BytesIO(artifact.getvalue()), provider)


def test_a_different_key_under_the_same_label_is_refused(
    provider: Pkcs11KeyProvider, token: SoftHSMToken
) -> None:
    artifact = io.BytesIO()
    encrypt_stream(io.BytesIO(b"weights"), artifact, provider)
    delete_key(token, LABEL)
    token.generate_aes_key(LABEL, key_id="03")
    with pytest.raises(KeyProviderError, match="holds a different key under that label"):
        decrypt_segments(io.BytesIO(artifact.getvalue()), provider)


def test_a_key_on_another_token_is_refused(provider: Pkcs11KeyProvider, token: SoftHSMToken) -> None:
    artifact = io.BytesIO()
    encrypt_stream(io.BytesIO(b"weights"), artifact, provider)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "other",
            "--pin",
            token.pin,
            "--so-pin",
            token.so_pin,
        ],
        check=True,
        capture_output=True,
        env=token.env(),
    )
    with (
        Pkcs11KeyProvider(module=token.module, token_label="other", key_label=LABEL, pin=token.pin) as other,
        pytest.raises(KeyProviderError, match="but the key given is pkcs11 key 'pkcs11:token=other"),
    ):
        decrypt_segments(io.BytesIO(artifact.getvalue()), other)


def test_a_wrong_pin_is_refused(token: SoftHSMToken) -> None:
    with (
        Pkcs11KeyProvider(
            module=token.module, token_label=token.token_label, key_label=LABEL, pin="0000"
        ) as hsm,
        pytest.raises(KeyProviderError, match="refused the PIN"),
    ):
        hsm.wrap(DEK, CONTEXT)


def test_an_unknown_token_is_refused(token: SoftHSMToken) -> None:
    with (
        Pkcs11KeyProvider(module=token.module, token_label="nope", key_label=LABEL, pin=token.pin) as hsm,
        pytest.raises(KeyProviderError, match="no PKCS#11 token labelled 'nope'"),
    ):
        hsm.wrap(DEK, CONTEXT)


def test_a_missing_key_is_refused_and_can_be_created(softhsm: SoftHSMToken) -> None:
    with Pkcs11KeyProvider(
        module=softhsm.module, token_label=softhsm.token_label, key_label="fresh", pin=softhsm.pin
    ) as hsm:
        with pytest.raises(KeyProviderError, match="no AES key labelled 'fresh'"):
            hsm.wrap(DEK, CONTEXT)
        assert hsm.create().version == "1"
        with pytest.raises(KeyProviderError, match="already exists"):
            hsm.create()
        assert hsm.unwrap(hsm.wrap(DEK, CONTEXT), CONTEXT) == DEK


def test_a_missing_module_is_refused() -> None:
    with pytest.raises(KeyProviderError, match=r"cannot load PKCS#11 module /nonexistent/module\.so"):
        Pkcs11KeyProvider(module="/nonexistent/module.so", token_label="t", key_label="k", pin="1")


def test_two_providers_share_the_module(token: SoftHSMToken) -> None:
    """Closing one provider must not finalise the module under another one."""
    first = Pkcs11KeyProvider(
        module=token.module, token_label=token.token_label, key_label=LABEL, pin=token.pin
    )
    second = Pkcs11KeyProvider(
        module=token.module, token_label=token.token_label, key_label=LABEL, pin=token.pin
    )
    wrapped = first.wrap(DEK, CONTEXT)
    first.close()
    assert second.unwrap(wrapped, CONTEXT) == DEK
    second.close()
    with pytest.raises(KeyProviderError, match="was closed"):
        second.wrap(DEK, CONTEXT)


def test_the_module_is_shared_with_other_pykcs11_users(token: SoftHSMToken) -> None:
    """model_signing's PKCS#11 signer loads the same module through PyKCS11 in the same process."""
    signer_side = PyKCS11.PyKCS11Lib().load(token.module)
    try:
        with Pkcs11KeyProvider(
            module=token.module, token_label=token.token_label, key_label=LABEL, pin=token.pin
        ) as hsm:
            assert hsm.unwrap(hsm.wrap(DEK, CONTEXT), CONTEXT) == DEK
        labels = [
            signer_side.getTokenInfo(slot).label.strip()
            for slot in signer_side.getSlotList(tokenPresent=True)
        ]
        assert token.token_label in labels  # still initialised after the provider closed
    finally:
        signer_side.unload()
