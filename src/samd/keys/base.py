"""The key-provider interface: wrap and unwrap data keys under a key-encryption key (KEK).

A data key (DEK) encrypts one artifact; a provider wraps it under its KEK and records which key and
which version of it did so. Providers never hand out KEK material: the local keyset keeps it in a
file or a Kubernetes Secret, AWS KMS and PKCS#11 tokens never let it leave.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, Self, cast

from samd.errors import KeyProviderError

DEK_SIZE = 32
"""Data keys are 256-bit AES keys."""


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by a provider, and which key and version wrapped it."""

    provider: str
    key_id: str
    key_version: str
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyVersionInfo:
    """One version of a key-encryption key. `created` is None where the provider keeps no time."""

    version: str
    created: datetime | None
    primary: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "created": self.created.isoformat() if self.created else None,
            "primary": self.primary,
        }


@dataclass(frozen=True)
class KeyDescription:
    """What a provider can say about its key without revealing any secret."""

    provider: str
    key_id: str
    current_version: str
    versions: tuple[KeyVersionInfo, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "key_id": self.key_id,
            "current_version": self.current_version,
            "versions": [version.to_dict() for version in self.versions],
        }


class KeyProvider(Protocol):
    """A key-encryption key that wraps and unwraps data keys.

    `context` is authenticated, not encrypted: unwrap succeeds only with the context given to wrap
    (AES-GCM associated data locally and on PKCS#11 tokens, the encryption context on AWS KMS).
    """

    @property
    def kind(self) -> str:
        """The provider name recorded in artifact headers: "local", "aws-kms" or "pkcs11"."""
        ...

    @property
    def key_id(self) -> str:
        """The stable identifier of the key, recorded in artifact headers."""
        ...

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        """Wrap `dek` under the current (primary) version of the key."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Return the data key; KeyProviderError if this key cannot unwrap it."""
        ...

    def rotate(self) -> KeyVersionInfo:
        """Add a key version and make it current; older versions still unwrap."""
        ...

    def describe(self) -> KeyDescription:
        """The key id, current version and all versions, without secrets."""
        ...

    def close(self) -> None:
        """Release sessions or connections; the provider is unusable afterwards."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None:
        """Close the provider."""
        ...


class KeyResolver(Protocol):
    """Finds the provider able to unwrap a given wrapped key (by provider kind and key id)."""

    def provider_for(self, wrapped: WrappedKey) -> KeyProvider: ...


class KeyRing:
    """A KeyResolver over a fixed set of providers, matched by provider kind and key id."""

    def __init__(self, providers: Iterable[KeyProvider]) -> None:
        self._providers = tuple(providers)
        if not self._providers:
            raise ValueError("a key ring needs at least one key provider")

    @property
    def providers(self) -> tuple[KeyProvider, ...]:
        return self._providers

    def provider_for(self, wrapped: WrappedKey) -> KeyProvider:
        for provider in self._providers:
            if provider.kind == wrapped.provider and provider.key_id == wrapped.key_id:
                return provider
        available = ", ".join(f"{p.kind} key {p.key_id!r}" for p in self._providers)
        raise KeyProviderError(
            f"the data key was wrapped by {wrapped.provider} key {wrapped.key_id!r} "
            f"(version {wrapped.key_version}), but the key given is {available}",
            hint="pass the key the artifact was encrypted with (`samd inspect` shows it)",
        )


def as_resolver(keys: KeyResolver | KeyProvider) -> KeyResolver:
    """Accept either a single provider or a resolver wherever keys are needed."""
    # Checked structurally by the one method that sets them apart: an isinstance check against
    # the runtime Protocol would read every property, and KMS `key_id` is a network call.
    resolver = getattr(keys, "provider_for", None)
    if resolver is not None:
        return cast("KeyResolver", keys)
    return KeyRing([cast("KeyProvider", keys)])


def check_dek(dek: bytes) -> None:
    """Refuse anything but a 256-bit data key before it is wrapped."""
    if len(dek) != DEK_SIZE:
        raise ValueError(f"a data key must be {DEK_SIZE} bytes, got {len(dek)}")
