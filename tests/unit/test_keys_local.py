"""The local keyset provider: keygen, wrap/unwrap, rotation, persistence, malformed keysets."""

from __future__ import annotations

import base64
import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from samd.errors import KeyProviderError, UsageError
from samd.keys import KeyRing, LocalKeyProvider, WrappedKey, keygen_local

pytestmark = pytest.mark.unit

DEK = bytes(range(32))
CONTEXT = b"artifact-identity"


def test_keygen_writes_a_private_keyset_with_one_version(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    provider = keygen_local(path, key_id="team-a")
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = LocalKeyProvider.from_path(path)
    description = loaded.describe()
    assert (description.provider, description.key_id, description.current_version) == ("local", "team-a", "1")
    assert len(description.versions) == 1
    created = description.versions[0].created
    assert created is not None
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    assert loaded.unwrap(provider.wrap(DEK, CONTEXT), CONTEXT) == DEK


def test_keygen_picks_a_unique_key_id_by_default(tmp_path: Path) -> None:
    first = keygen_local(tmp_path / "a.json")
    second = keygen_local(tmp_path / "b.json")
    assert first.key_id.startswith("local-")
    assert first.key_id != second.key_id


def test_keygen_refuses_to_replace_a_keyset(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    keygen_local(path, key_id="original")
    before = path.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        keygen_local(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keyset.json"]
    keygen_local(path, key_id="replacement", overwrite=True)
    assert LocalKeyProvider.from_path(path).key_id == "replacement"


def test_unwrap_needs_the_same_context() -> None:
    provider = LocalKeyProvider.generate("k")
    wrapped = provider.wrap(DEK, CONTEXT)
    with pytest.raises(KeyProviderError, match="cannot unwrap"):
        provider.unwrap(wrapped, b"another artifact")


def test_unwrap_refuses_a_key_wrapped_by_another_provider_kind() -> None:
    provider = LocalKeyProvider.generate("k")
    foreign = WrappedKey(provider="aws-kms", key_id="k", key_version="1", ciphertext=b"\x00" * 60)
    with pytest.raises(KeyProviderError, match="wrapped by aws-kms key 'k'"):
        provider.unwrap(foreign, CONTEXT)


def test_unwrap_refuses_a_wrapped_key_of_the_wrong_length() -> None:
    provider = LocalKeyProvider.generate("k")
    wrapped = provider.wrap(DEK, CONTEXT)
    short = WrappedKey(wrapped.provider, wrapped.key_id, wrapped.key_version, wrapped.ciphertext[:-1])
    with pytest.raises(KeyProviderError, match="59 bytes, not the 60"):
        provider.unwrap(short, CONTEXT)


def test_wrap_refuses_a_data_key_that_is_not_256_bits() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LocalKeyProvider.generate("k").wrap(b"short", CONTEXT)


def test_rotation_is_written_to_the_file_and_old_versions_still_unwrap(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    provider = keygen_local(path, key_id="k")
    old = provider.wrap(DEK, CONTEXT)
    info = provider.rotate()
    assert (info.version, info.primary) == ("2", True)
    new = provider.wrap(DEK, CONTEXT)
    assert (old.key_version, new.key_version) == ("1", "2")

    reloaded = LocalKeyProvider.from_path(path)
    assert reloaded.describe().current_version == "2"
    assert [v.primary for v in reloaded.describe().versions] == [False, True]
    assert reloaded.unwrap(old, CONTEXT) == DEK
    assert reloaded.unwrap(new, CONTEXT) == DEK
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyset.json"]


def test_rotation_by_two_holders_of_the_file_loses_no_version(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    keygen_local(path, key_id="k")
    first, second = LocalKeyProvider.from_path(path), LocalKeyProvider.from_path(path)
    first.rotate()
    wrapped_by_v2 = first.wrap(DEK, CONTEXT)
    second.rotate()
    final = LocalKeyProvider.from_path(path)
    assert [v.version for v in final.describe().versions] == ["1", "2", "3"]
    assert final.unwrap(wrapped_by_v2, CONTEXT) == DEK


def test_rotation_fails_cleanly_when_the_file_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    provider = keygen_local(path, key_id="k")
    path.unlink()
    with pytest.raises(UsageError, match="does not exist"):
        provider.rotate()
    assert provider.describe().current_version == "1"
    assert list(tmp_path.iterdir()) == []


def test_a_keyset_from_secret_data_rotates_in_memory() -> None:
    secret_data = LocalKeyProvider.generate("from-secret").to_bytes()
    provider = LocalKeyProvider.from_bytes(secret_data, origin="Secret samd/keys")
    old = provider.wrap(DEK, CONTEXT)
    provider.rotate()
    updated = provider.to_bytes()
    assert json.loads(updated)["primary_version"] == 2
    reloaded = LocalKeyProvider.from_bytes(updated)
    assert reloaded.unwrap(old, CONTEXT) == DEK
    assert provider.path is None


def test_describe_reveals_no_key_material(tmp_path: Path) -> None:
    provider = keygen_local(tmp_path / "keyset.json", key_id="k")
    provider.rotate()
    shown = json.dumps(provider.describe().to_dict())
    for version in json.loads(provider.to_bytes())["versions"]:
        assert version["material"] not in shown
    assert "material" not in shown


def test_a_world_readable_keyset_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keyset.json"
    keygen_local(path, key_id="k")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="samd.keys.local"):
        LocalKeyProvider.from_path(path)
    assert "accessible by group or others (mode 644)" in caplog.text


def test_a_keyset_in_a_key_ring_is_found_by_key_id() -> None:
    first, second = LocalKeyProvider.generate("a"), LocalKeyProvider.generate("b")
    wrapped = second.wrap(DEK, CONTEXT)
    assert KeyRing([first, second]).provider_for(wrapped) is second
    with pytest.raises(KeyProviderError, match="key given is local key 'a'"):
        KeyRing([first]).provider_for(wrapped)


def _valid_document() -> dict[str, object]:
    return json.loads(LocalKeyProvider.generate("k").to_bytes())  # type: ignore[no-any-return]


def _with(**changes: object) -> bytes:
    document = _valid_document()
    document.update(changes)
    return json.dumps(document).encode()


def _version(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "version": 1,
        "created": "2026-01-01T00:00:00Z",
        "material": base64.b64encode(os.urandom(32)).decode(),
    }
    entry.update(changes)
    return entry


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[]", "top level is not an object"),
        (_with(format="something-else"), "format is 'something-else'"),
        (_with(key_id=7), "key_id is missing"),
        (_with(key_id=" padded"), "invalid key id"),
        (_with(versions=[]), "versions is missing or empty"),
        (_with(versions=[_version(version=0)]), "not a positive integer"),
        (_with(versions=[_version(created="yesterday")]), "not an ISO 8601 time"),
        (_with(versions=[_version(created="2026-01-01T00:00:00")]), "has no time zone"),
        (_with(versions=[_version(material="***")]), "not base64"),
        (_with(versions=[_version(material=base64.b64encode(b"short").decode())]), "5 bytes, not 32"),
        (_with(versions=[_version(), _version()], primary_version=1), "share a version number"),
        (_with(primary_version=9), "primary_version 9 is not one of the versions"),
        (b" " * (1 << 20) + b"{}", "larger than"),
    ],
)
def test_malformed_keysets_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(UsageError, match="Secret ns/name is not a valid SAMD local keyset") as caught:
        LocalKeyProvider.from_bytes(data, origin="Secret ns/name")
    assert reason in caught.value.message


def test_a_missing_keyset_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist") as caught:
        LocalKeyProvider.from_path(tmp_path / "missing.json")
    assert caught.value.hint is not None
    assert "samd keygen" in caught.value.hint
