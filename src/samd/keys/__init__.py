"""Key providers: wrap and unwrap data keys under key-encryption keys (local keyset, AWS KMS, PKCS#11).

The AWS KMS and PKCS#11 providers live in `samd.keys.aws_kms` and `samd.keys.hsm` and are imported
only when used (boto3 and the PKCS#11 binding are slow to import); `provider_from_uri` opens any of
them from a key URI.
"""

from samd.keys.base import (
    DEK_SIZE,
    KeyDescription,
    KeyProvider,
    KeyResolver,
    KeyRing,
    KeyVersionInfo,
    WrappedKey,
    as_resolver,
)
from samd.keys.local import LocalKeyProvider, keygen_local
from samd.keys.uri import provider_from_uri, redact_uri

__all__ = [
    "DEK_SIZE",
    "KeyDescription",
    "KeyProvider",
    "KeyResolver",
    "KeyRing",
    "KeyVersionInfo",
    "LocalKeyProvider",
    "WrappedKey",
    "as_resolver",
    "keygen_local",
    "provider_from_uri",
    "redact_uri",
]
