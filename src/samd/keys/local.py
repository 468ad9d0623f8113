"""A local keyset: AES-256-GCM key-encryption keys kept in a JSON file or a Kubernetes Secret.

The keyset holds every version of one key. The primary version wraps new data keys; older versions
stay so that artifacts wrapped before a rotation still unwrap. The file is secret: it is written
with 0600 permissions, atomically (temporary file in the same directory, fsync, rename).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import secrets
import stat
import struct
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from samd.errors import KeyProviderError, UsageError
from samd.keys.base import KeyDescription, KeyVersionInfo, WrappedKey, check_dek
from samd.storage.stream import read_at_most

logger = logging.getLogger(__name__)

KEYSET_FORMAT = "samd.local-keyset/v1"
KIND = "local"
_KEK_SIZE = 32
_NONCE_SIZE = 12
_WRAP_DOMAIN = b"samd.local-wrap/v1\x00"
_WRAPPED_SIZE = _NONCE_SIZE + 32 + 16  # nonce, sealed 256-bit data key, GCM tag
_MAX_KEYSET_BYTES = 1 << 20


@dataclass(frozen=True)
class _KeyVersion:
    version: int
    created: datetime
    material: bytes = field(repr=False)


def _wrap_aad(key_id: str, version: str, context: bytes) -> bytes:
    """Associated data binding a wrapped key to its key id, version and the caller's context.

    Each part is length-prefixed so that no two different triples encode to the same bytes.
    """
    parts = (key_id.encode(), version.encode(), context)
    return _WRAP_DOMAIN + b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class LocalKeyProvider:
    """A KeyProvider over a local keyset, read from a file or from bytes (a Secret's data value)."""

    def __init__(
        self, key_id: str, versions: list[_KeyVersion], primary: int, *, path: Path | None, origin: str
    ) -> None:
        self._key_id = key_id
        self._versions = {v.version: v for v in versions}
        self._primary = primary
        self._path = path
        self._origin = origin
        self._lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> LocalKeyProvider:
        """Load a keyset file; `rotate` writes new versions back to it."""
        keyset_path = Path(path)
        try:
            with keyset_path.open("rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                data = read_at_most(handle, _MAX_KEYSET_BYTES)
        except FileNotFoundError:
            raise UsageError(
                f"local keyset {keyset_path} does not exist",
                hint="create one with `samd keygen local:PATH`",
            ) from None
        except OSError as exc:
            raise UsageError(f"cannot read local keyset {keyset_path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning(
                "local keyset %s is accessible by group or others (mode %o); it should be 0600",
                keyset_path,
                stat.S_IMODE(mode),
            )
        key_id, versions, primary = _parse_keyset(data, str(keyset_path))
        return cls(key_id, versions, primary, path=keyset_path, origin=str(keyset_path))

    @classmethod
    def from_bytes(cls, data: bytes, *, origin: str = "keyset data") -> LocalKeyProvider:
        """Load a keyset from bytes, e.g. the decoded value of a Kubernetes Secret's `data` entry.

        Such a keyset has no file: after `rotate`, persist `to_bytes()` yourself (e.g. update the
        Secret). `origin` names the source in error messages.
        """
        key_id, versions, primary = _parse_keyset(data, origin)
        return cls(key_id, versions, primary, path=None, origin=origin)

    @classmethod
    def generate(cls, key_id: str | None = None) -> LocalKeyProvider:
        """A new in-memory keyset with one version (see `keygen_local` to write it to a file)."""
        chosen_id = key_id if key_id is not None else f"local-{secrets.token_hex(8)}"
        _check_key_id(chosen_id)
        first = _KeyVersion(version=1, created=_utcnow(), material=AESGCM.generate_key(bit_length=256))
        return cls(chosen_id, [first], 1, path=None, origin="generated keyset")

    # -- KeyProvider --------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return KIND

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def primary_version(self) -> str:
        return str(self._primary)

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        check_dek(dek)
        with self._lock:
            primary = self._versions[self._primary]
        version = str(primary.version)
        nonce = os.urandom(_NONCE_SIZE)
        sealed = AESGCM(primary.material).encrypt(nonce, dek, _wrap_aad(self._key_id, version, context))
        return WrappedKey(provider=KIND, key_id=self._key_id, key_version=version, ciphertext=nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        if wrapped.provider != KIND or wrapped.key_id != self._key_id:
            raise KeyProviderError(
                f"the data key was wrapped by {wrapped.provider} key {wrapped.key_id!r}, "
                f"but this local keyset ({self._origin}) holds key {self._key_id!r}",
                hint="use the keyset the artifact was encrypted with",
            )
        with self._lock:
            known = sorted(self._versions)
            entry = self._versions.get(int(wrapped.key_version)) if wrapped.key_version.isdigit() else None
        if entry is None:
            raise KeyProviderError(
                f"local key {self._key_id!r} has no version {wrapped.key_version!r} "
                f"(versions: {', '.join(map(str, known))}) in {self._origin}",
                hint="the keyset is older than the artifact, or the version was removed from it",
            )
        sealed = wrapped.ciphertext
        if len(sealed) != _WRAPPED_SIZE:
            raise KeyProviderError(
                f"the wrapped data key is {len(sealed)} bytes, not the {_WRAPPED_SIZE} a local key "
                "wraps: it was altered or belongs to another provider"
            )
        try:
            return AESGCM(entry.material).decrypt(
                sealed[:_NONCE_SIZE],
                sealed[_NONCE_SIZE:],
                _wrap_aad(self._key_id, wrapped.key_version, context),
            )
        except InvalidTag:
            raise KeyProviderError(
                f"local key {self._key_id!r} version {wrapped.key_version} cannot unwrap this data key: "
                f"the keyset in {self._origin} holds different key material for that version (a wrong "
                "key), or the wrapped key or the artifact identity it is bound to was altered",
            ) from None

    def rotate(self) -> KeyVersionInfo:
        with self._lock:
            if self._path is not None:
                # Re-read first so that a rotation made by another process is not lost.
                on_disk = LocalKeyProvider.from_path(self._path)
                if on_disk.key_id != self._key_id:
                    raise KeyProviderError(
                        f"keyset file {self._path} now holds key {on_disk.key_id!r}, not {self._key_id!r}: "
                        "refusing to rotate over it"
                    )
                self._versions = dict(on_disk._versions)
                self._primary = on_disk._primary
            new = _KeyVersion(
                version=max(self._versions) + 1,
                created=_utcnow(),
                material=AESGCM.generate_key(bit_length=256),
            )
            self._versions[new.version] = new
            previous_primary = self._primary
            self._primary = new.version
            if self._path is not None:
                try:
                    write_secret_file(self._path, self._serialize())
                except BaseException:
                    del self._versions[new.version]
                    self._primary = previous_primary
                    raise
        logger.info("rotated local key %s to version %d", self._key_id, new.version)
        return KeyVersionInfo(version=str(new.version), created=new.created, primary=True)

    def describe(self) -> KeyDescription:
        with self._lock:
            versions = tuple(
                KeyVersionInfo(version=str(v.version), created=v.created, primary=v.version == self._primary)
                for v in sorted(self._versions.values(), key=lambda v: v.version)
            )
            primary = str(self._primary)
        return KeyDescription(provider=KIND, key_id=self._key_id, current_version=primary, versions=versions)

    def close(self) -> None:
        """Nothing to release: the keyset lives in memory."""

    def __enter__(self) -> LocalKeyProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- persistence --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The keyset as JSON bytes. SECRET: it holds every key version's material."""
        with self._lock:
            return self._serialize()

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the keyset to `path` (0600, atomically); later rotations are written there too."""
        target = Path(path)
        with self._lock:
            write_secret_file(target, self._serialize(), overwrite=overwrite)
            self._path = target
            self._origin = str(target)

    def _serialize(self) -> bytes:
        document = {
            "format": KEYSET_FORMAT,
            "key_id": self._key_id,
            "primary_version": self._primary,
            "versions": [
                {
                    "version": v.version,
                    "created": v.created.isoformat().replace("+00:00", "Z"),
                    "material": base64.b64encode(v.material).decode(),
                }
                for v in sorted(self._versions.values(), key=lambda v: v.version)
            ],
        }
        return (json.dumps(document, indent=2) + "\n").encode()


def keygen_local(
    path: str | os.PathLike[str], *, key_id: str | None = None, overwrite: bool = False
) -> LocalKeyProvider:
    """Create a keyset file with one fresh version, 0600, refusing to replace an existing file."""
    provider = LocalKeyProvider.generate(key_id)
    provider.save(path, overwrite=overwrite)
    return provider


def write_secret_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write `data` to `path` with mode 0600: temp file in the same directory, fsync, rename.

    Readers see either the old file or the new one, never a partial file; on failure the temporary
    file is removed and `path` is unchanged.
    """
    directory = path.parent if str(path.parent) else Path()
    if not overwrite and path.exists():
        raise UsageError(f"{path} already exists", hint="choose another path or remove the file first")
    # mkstemp creates the file with 0600 before any byte is written.
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if overwrite:
            os.replace(temp_name, path)
        else:
            # link() fails if the name exists, so two concurrent keygens cannot clobber each other.
            try:
                os.link(temp_name, path)
            except FileExistsError:
                raise UsageError(
                    f"{path} already exists", hint="choose another path or remove the file first"
                ) from None
            os.unlink(temp_name)
        _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_key_id(key_id: str) -> None:
    if not key_id or len(key_id) > 128 or not key_id.isprintable() or key_id.strip() != key_id:
        raise UsageError(f"invalid key id {key_id!r}: use 1-128 printable characters without edge spaces")


def _parse_keyset(data: bytes, origin: str) -> tuple[str, list[_KeyVersion], int]:
    def bad(reason: str) -> UsageError:
        return UsageError(f"{origin} is not a valid SAMD local keyset: {reason}")

    if len(data) > _MAX_KEYSET_BYTES:
        raise bad(f"larger than {_MAX_KEYSET_BYTES} bytes")
    try:
        document: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise bad("the top level is not an object")
    if document.get("format") != KEYSET_FORMAT:
        raise bad(f"format is {document.get('format')!r}, expected {KEYSET_FORMAT!r}")
    key_id = document.get("key_id")
    if not isinstance(key_id, str):
        raise bad("key_id is missing or not a string")
    try:
        _check_key_id(key_id)
    except UsageError as exc:
        raise bad(exc.message) from None
    primary = document.get("primary_version")
    raw_versions = document.get("versions")
    if not isinstance(raw_versions, list) or not raw_versions:
        raise bad("versions is missing or empty")
    versions: list[_KeyVersion] = []
    for index, entry in enumerate(raw_versions):
        if not isinstance(entry, dict):
            raise bad(f"versions[{index}] is not an object")
        number = entry.get("version")
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise bad(f"versions[{index}].version is not a positive integer")
        created_text = entry.get("created")
        try:
            created = datetime.fromisoformat(str(created_text))
        except ValueError:
            raise bad(f"versions[{index}].created is not an ISO 8601 time") from None
        if created.tzinfo is None:
            raise bad(f"versions[{index}].created has no time zone")
        try:
            material = base64.b64decode(str(entry.get("material")), validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"versions[{index}].material is not base64") from None
        if len(material) != _KEK_SIZE:
            raise bad(f"versions[{index}].material is {len(material)} bytes, not {_KEK_SIZE}")
        versions.append(_KeyVersion(version=number, created=created, material=material))
    numbers = [v.version for v in versions]
    if len(set(numbers)) != len(numbers):
        raise bad("two entries share a version number")
    if not isinstance(primary, int) or isinstance(primary, bool) or primary not in numbers:
        raise bad(f"primary_version {primary!r} is not one of the versions {numbers}")
    return key_id, versions, primary
