"""The errors SAMD raises, each with the CLI exit code it maps to.

Every error carries a message that names what is wrong and, where there is
one, a hint saying how to fix it. Exit codes are documented in docs/cli.md.
"""

from __future__ import annotations


class SamdError(Exception):
    """Base class: a failure a user can act on."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(SamdError):
    """Bad arguments or malformed input files (YAML, JSON, URIs)."""

    exit_code = 2


class VerificationError(SamdError):
    """A signature does not verify, or model files do not match the signed manifest."""

    exit_code = 3


class IntegrityError(SamdError):
    """An encrypted artifact was truncated, reordered, tampered with or decrypted with the wrong key."""

    exit_code = 4


class KeyProviderError(SamdError):
    """A key provider refused or failed (unknown key, wrong key, KMS or HSM error)."""

    exit_code = 5

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient


class StorageError(SamdError):
    """Reading or writing an artifact in storage failed."""

    exit_code = 6

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient
