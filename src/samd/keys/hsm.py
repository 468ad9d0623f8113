"""A PKCS#11 token (an HSM; SoftHSM2 in tests) as a key provider, through PyKCS11.

An AES-256 secret key on the token wraps data keys with CKM_AES_GCM: the token encrypts the data key
with a random 96-bit IV and associated data binding it to the key id, the key version and the
caller's context. The key never leaves the token (CKA_SENSITIVE, not CKA_EXTRACTABLE).

Versions are separate key objects: the object labelled `LABEL` (or `LABEL.v1`) is version 1 and
`LABEL.vN` is version N. `rotate` generates `LABEL.v<N+1>` on the token; the highest version wraps,
all versions unwrap. Tokens keep no creation time SAMD can read, so versions have none.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import PyKCS11
from PyKCS11 import (
    CKA_CLASS,
    CKA_DECRYPT,
    CKA_ENCRYPT,
    CKA_EXTRACTABLE,
    CKA_KEY_TYPE,
    CKA_LABEL,
    CKA_PRIVATE,
    CKA_SENSITIVE,
    CKA_TOKEN,
    CKA_VALUE_LEN,
    CKF_RW_SESSION,
    CKF_SERIAL_SESSION,
    CKK_AES,
    CKO_SECRET_KEY,
    CKR_PIN_INCORRECT,
    CKR_PIN_LEN_RANGE,
    CKR_USER_ALREADY_LOGGED_IN,
    PyKCS11Error,
)

from samd.errors import KeyProviderError
from samd.keys.base import KeyDescription, KeyVersionInfo, WrappedKey, check_dek

logger = logging.getLogger(__name__)

KIND = "pkcs11"
_IV_SIZE = 12
_TAG_BITS = 128
_WRAP_DOMAIN = b"samd.pkcs11-wrap/v1\x00"

# PyKCS11 (which model_signing's PKCS#11 signer also uses) counts the users of each module across
# the process and finalises it with the last one, so signing and key wrapping can share a module.
# The module is initialised without OS locking: calls into it are serialised here.
_CALL_LOCKS: dict[str, threading.RLock] = {}
_CALL_LOCKS_GUARD = threading.Lock()


def _call_lock(module: str) -> threading.RLock:
    with _CALL_LOCKS_GUARD:
        return _CALL_LOCKS.setdefault(module, threading.RLock())


def _wrap_aad(key_id: str, version: str, context: bytes) -> bytes:
    parts = (key_id.encode(), version.encode(), context)
    return _WRAP_DOMAIN + b"".join(struct.pack(">I", len(part)) + part for part in parts)


class Pkcs11KeyProvider:
    """A KeyProvider over an AES key family (`LABEL`, `LABEL.v2`, ...) on one PKCS#11 token."""

    def __init__(self, *, module: str, token_label: str, key_label: str, pin: str) -> None:
        if not key_label or not token_label:
            raise KeyProviderError("a PKCS#11 key provider needs a token label and a key (object) label")
        self._module = module
        self._token_label = token_label
        self._key_label = key_label
        self._pin = pin
        self._version_label = re.compile(re.escape(key_label) + r"(?:\.v([1-9][0-9]{0,8}))?")
        self._lock = _call_lock(module)
        self._library: Any = PyKCS11.PyKCS11Lib()
        try:
            with self._lock:
                self._library.load(module)
        except PyKCS11Error as exc:
            raise KeyProviderError(
                f"cannot load PKCS#11 module {module}: {exc}", hint="check module-path in the pkcs11: URI"
            ) from None
        self._closed = False

    @property
    def kind(self) -> str:
        return KIND

    @property
    def key_id(self) -> str:
        return f"pkcs11:token={quote(self._token_label, safe='')};object={quote(self._key_label, safe='')}"

    @property
    def module(self) -> str:
        return self._module

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        check_dek(dek)
        with self._session() as session:
            versions = self._versions(session)
            if not versions:
                raise self._no_key_error()
            number = max(versions)
            version = str(number)
            iv = os.urandom(_IV_SIZE)
            mechanism = PyKCS11.AES_GCM_Mechanism(iv, _wrap_aad(self.key_id, version, context), _TAG_BITS)
            try:
                sealed = bytes(session.encrypt(versions[number], dek, mechanism))
            except PyKCS11Error as exc:
                raise KeyProviderError(
                    f"the PKCS#11 token refused to wrap with {self._key_label!r} version {version}: {exc}",
                    hint="the key must be an AES key allowed to encrypt, on a token supporting CKM_AES_GCM",
                ) from None
        return WrappedKey(provider=KIND, key_id=self.key_id, key_version=version, ciphertext=iv + sealed)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        if wrapped.provider != KIND or wrapped.key_id != self.key_id:
            raise KeyProviderError(
                f"the data key was wrapped by {wrapped.provider} key {wrapped.key_id!r}, "
                f"but this provider holds {self.key_id!r}",
                hint="use the key the artifact was encrypted with (`samd inspect` shows it)",
            )
        if len(wrapped.ciphertext) <= _IV_SIZE + _TAG_BITS // 8:
            raise KeyProviderError("the wrapped data key is too short: it was altered or truncated")
        with self._session() as session:
            versions = self._versions(session)
            number = int(wrapped.key_version) if wrapped.key_version.isdigit() else None
            key = versions.get(number) if number is not None else None
            if key is None:
                known = ", ".join(map(str, sorted(versions))) or "none"
                raise KeyProviderError(
                    f"PKCS#11 key {self.key_id!r} has no version {wrapped.key_version!r} on the token "
                    f"(versions: {known})",
                    hint=f"version N is the object labelled {self._key_label}.vN",
                )
            iv, sealed = wrapped.ciphertext[:_IV_SIZE], wrapped.ciphertext[_IV_SIZE:]
            aad = _wrap_aad(self.key_id, wrapped.key_version, context)
            try:
                return bytes(session.decrypt(key, sealed, PyKCS11.AES_GCM_Mechanism(iv, aad, _TAG_BITS)))
            except PyKCS11Error:
                # Tokens report a failed GCM tag check with assorted codes (SoftHSM2: CKR_GENERAL_ERROR).
                raise KeyProviderError(
                    f"PKCS#11 key {self.key_id!r} version {wrapped.key_version} cannot unwrap this data "
                    "key: the token holds a different key under that label (a wrong key), or the wrapped "
                    "key or the artifact identity it is bound to was altered",
                ) from None

    def create(self) -> KeyVersionInfo:
        """Generate version 1 (object `LABEL`) on the token; refuses if the key already exists."""
        with self._session(rw=True) as session:
            if self._versions(session):
                raise KeyProviderError(f"PKCS#11 key {self.key_id!r} already exists on the token")
            self._generate(session, self._key_label)
        logger.info("created PKCS#11 key %s", self.key_id)
        return KeyVersionInfo(version="1", created=None, primary=True)

    def rotate(self) -> KeyVersionInfo:
        with self._session(rw=True) as session:
            versions = self._versions(session)
            if not versions:
                raise self._no_key_error()
            number = max(versions) + 1
            self._generate(session, f"{self._key_label}.v{number}")
        logger.info("rotated PKCS#11 key %s to version %d", self.key_id, number)
        return KeyVersionInfo(version=str(number), created=None, primary=True)

    def describe(self) -> KeyDescription:
        with self._session() as session:
            numbers = sorted(self._versions(session))
        if not numbers:
            raise self._no_key_error()
        versions = tuple(
            KeyVersionInfo(version=str(n), created=None, primary=n == numbers[-1]) for n in numbers
        )
        return KeyDescription(
            provider=KIND, key_id=self.key_id, current_version=str(numbers[-1]), versions=versions
        )

    def close(self) -> None:
        """Release this provider's use of the module (finalised when its last user is gone)."""
        if not self._closed:
            self._closed = True
            with self._lock:
                self._library.unload()

    def __enter__(self) -> Pkcs11KeyProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------------

    @contextmanager
    def _session(self, *, rw: bool = False) -> Iterator[Any]:
        if self._closed:
            raise KeyProviderError("this PKCS#11 key provider was closed")
        with self._lock:
            slot = self._find_slot()
            flags = CKF_SERIAL_SESSION | (CKF_RW_SESSION if rw else 0)
            try:
                session = self._library.openSession(slot, flags)
            except PyKCS11Error as exc:
                raise KeyProviderError(
                    f"cannot open a session on PKCS#11 token {self._token_label!r}: {exc}"
                ) from None
            try:
                try:
                    session.login(self._pin)
                except PyKCS11Error as exc:
                    if exc.value in (CKR_PIN_INCORRECT, CKR_PIN_LEN_RANGE):
                        raise KeyProviderError(
                            f"the PKCS#11 token {self._token_label!r} refused the PIN",
                            hint="check pin-value / pin-source in the URI or SAMD_PKCS11_PIN",
                        ) from None
                    if exc.value != CKR_USER_ALREADY_LOGGED_IN:
                        raise KeyProviderError(
                            f"cannot log in to PKCS#11 token {self._token_label!r}: {exc}"
                        ) from None
                yield session
            finally:
                # No logout: login state is shared by every session of the process; the token
                # logs out by itself when its last session closes.
                session.closeSession()

    def _find_slot(self) -> Any:
        try:
            for slot in self._library.getSlotList(tokenPresent=True):
                if self._library.getTokenInfo(slot).label.strip() == self._token_label:
                    return slot
        except PyKCS11Error as exc:
            raise KeyProviderError(
                f"cannot list the tokens of PKCS#11 module {self._module}: {exc}"
            ) from None
        raise KeyProviderError(
            f"no PKCS#11 token labelled {self._token_label!r} in module {self._module}",
            hint="check token= in the pkcs11: URI (and SOFTHSM2_CONF for SoftHSM2)",
        )

    def _versions(self, session: Any) -> dict[int, Any]:
        versions: dict[int, Any] = {}
        for key in session.findObjects([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES)]):
            label = session.getAttributeValue(key, [CKA_LABEL])[0]
            match = self._version_label.fullmatch(str(label or ""))
            if match is None:
                continue
            number = int(match.group(1) or 1)
            if number in versions:
                raise KeyProviderError(
                    f"two AES keys on token {self._token_label!r} are version {number} of {self._key_label!r}",
                    hint=f"keep one object per version: {self._key_label} (or .v1), {self._key_label}.v2, ...",
                )
            versions[number] = key
        return versions

    def _generate(self, session: Any, label: str) -> None:
        template = [
            (CKA_CLASS, CKO_SECRET_KEY),
            (CKA_KEY_TYPE, CKK_AES),
            (CKA_VALUE_LEN, 32),
            (CKA_LABEL, label),
            (CKA_TOKEN, True),
            (CKA_PRIVATE, True),
            (CKA_SENSITIVE, True),
            (CKA_EXTRACTABLE, False),
            (CKA_ENCRYPT, True),
            (CKA_DECRYPT, True),
        ]
        try:
            session.generateKey(template, PyKCS11.MechanismAESGENERATEKEY)
        except PyKCS11Error as exc:
            raise KeyProviderError(f"the PKCS#11 token refused to generate key {label!r}: {exc}") from None

    def _no_key_error(self) -> KeyProviderError:
        return KeyProviderError(
            f"no AES key labelled {self._key_label!r} on PKCS#11 token {self._token_label!r}",
            hint="create it with `samd keygen` or pkcs11-tool --keygen --key-type AES:32",
        )
