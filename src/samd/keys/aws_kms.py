"""AWS KMS as a key provider: data keys are wrapped with Encrypt and unwrapped with Decrypt.

The wrapped key is bound to the artifact through the KMS encryption context
(`{"samd-context": base64(context)}`), which KMS authenticates and writes to CloudTrail.

KMS hides the backing key versions: a ciphertext names its backing key internally, and Decrypt
picks it. SAMD records as key version `1 + the number of rotations ListKeyRotations reports` at the
time of wrapping, and the key ARN as key id. `rotate` asks for an on-demand rotation
(RotateKeyOnDemand); on AWS it completes asynchronously, so ListKeyRotations may show it a little
later. Unwrapping never depends on the recorded version.
"""

from __future__ import annotations

import base64
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from samd.errors import KeyProviderError
from samd.keys.base import KeyDescription, KeyVersionInfo, WrappedKey, check_dek

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

logger = logging.getLogger(__name__)

KIND = "aws-kms"
CONTEXT_KEY = "samd-context"
UNOBSERVED_VERSION = "unknown"
"""Recorded as key version when the caller may not call ListKeyRotations."""

_TRANSIENT_CODES = frozenset(
    {
        "KMSInternalException",
        "DependencyTimeoutException",
        "ThrottlingException",
        "Throttling",
        "LimitExceededException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
    }
)
_WRONG_KEY_CODES = frozenset({"IncorrectKeyException", "AccessDeniedException", "InvalidCiphertextException"})

_T = TypeVar("_T")


class AwsKmsKeyProvider:
    """A KeyProvider backed by one symmetric AWS KMS key (key id, ARN or alias).

    The endpoint is `endpoint_url` if given, else what boto3 resolves (it honours
    AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_KMS); the region likewise (AWS_REGION, AWS_DEFAULT_REGION).
    """

    def __init__(
        self,
        key: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
        client: KMSClient | None = None,
    ) -> None:
        if not key:
            raise KeyProviderError("an AWS KMS key provider needs a key id, ARN or alias")
        self._key = key
        self._arn: str | None = key if _is_key_arn(key) else None
        if client is None:
            config = Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
            )
            try:
                # A session of its own: boto3's default session caches credentials process-wide
                # and is not safe to share between threads.
                session = boto3.session.Session(region_name=region)
                client = session.client("kms", endpoint_url=endpoint_url, config=config)
            except NoRegionError:
                raise KeyProviderError(
                    "no AWS region configured for KMS",
                    hint="set AWS_REGION or pass ?region=... in the aws-kms:// URI",
                ) from None
        self._client = client

    @property
    def kind(self) -> str:
        return KIND

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    @property
    def client(self) -> KMSClient:
        """The boto3 client, for callers that hook its events (the operator's address checks)."""
        return self._client

    @property
    def key_id(self) -> str:
        """The key ARN (looked up once with DescribeKey when the key was given by id or alias)."""
        if self._arn is None:
            metadata = self._call("DescribeKey", lambda: self._client.describe_key(KeyId=self._key))
            self._arn = metadata["KeyMetadata"]["Arn"]
        return self._arn

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        check_dek(dek)
        response = self._call(
            "Encrypt",
            lambda: self._client.encrypt(
                KeyId=self._key, Plaintext=dek, EncryptionContext=_encryption_context(context)
            ),
        )
        self._arn = response["KeyId"]
        return WrappedKey(
            provider=KIND,
            key_id=response["KeyId"],
            key_version=self._observed_version(),
            ciphertext=response["CiphertextBlob"],
        )

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        if wrapped.provider != KIND:
            raise KeyProviderError(
                f"the data key was wrapped by a {wrapped.provider} key, not by AWS KMS key {self._key!r}"
            )
        try:
            response = self._client.decrypt(
                CiphertextBlob=wrapped.ciphertext,
                EncryptionContext=_encryption_context(context),
                KeyId=self._key,
            )
        except ClientError as exc:
            code = _error_code(exc)
            if code in _WRONG_KEY_CODES:
                raise KeyProviderError(
                    f"AWS KMS key {self._key!r} cannot unwrap the data key wrapped by {wrapped.key_id!r} "
                    f"({code}): a wrong key, or the wrapped key or the artifact identity it is bound to "
                    "was altered",
                    hint="use the key the artifact was encrypted with (`samd inspect` shows it)",
                ) from None
            raise self._translate("Decrypt", exc) from None
        except BotoCoreError as exc:
            raise self._translate("Decrypt", exc) from None
        plaintext: bytes = response["Plaintext"]
        return plaintext

    def rotate(self) -> KeyVersionInfo:
        before = self._rotation_count()
        arn = self.key_id
        self._call("RotateKeyOnDemand", lambda: self._client.rotate_key_on_demand(KeyId=arn))
        logger.info("requested on-demand rotation of AWS KMS key %s", arn)
        return KeyVersionInfo(version=str(before + 2), created=datetime.now(UTC), primary=True)

    def describe(self) -> KeyDescription:
        arn = self.key_id
        metadata = self._call("DescribeKey", lambda: self._client.describe_key(KeyId=arn))["KeyMetadata"]
        rotations = sorted(self._rotations(), key=lambda rotation: rotation["RotationDate"])
        created_times: list[datetime | None] = [metadata.get("CreationDate")]
        created_times += [rotation.get("RotationDate") for rotation in rotations]
        versions = tuple(
            KeyVersionInfo(version=str(number), created=created, primary=number == len(created_times))
            for number, created in enumerate(created_times, start=1)
        )
        return KeyDescription(
            provider=KIND, key_id=arn, current_version=str(len(created_times)), versions=versions
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AwsKmsKeyProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------------

    def _observed_version(self) -> str:
        try:
            return str(self._rotation_count() + 1)
        except KeyProviderError as exc:
            if exc.transient:
                raise
            logger.warning(
                "cannot list rotations of AWS KMS key %s (%s); recording key version %r",
                self._key,
                exc.message,
                UNOBSERVED_VERSION,
            )
            return UNOBSERVED_VERSION

    def _rotation_count(self) -> int:
        return len(self._rotations())

    def _rotations(self) -> list[Any]:
        arn = self.key_id
        rotations: list[Any] = []
        marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"KeyId": arn}
            if marker:
                kwargs["Marker"] = marker
            page = self._call(
                "ListKeyRotations", functools.partial(self._client.list_key_rotations, **kwargs)
            )
            rotations.extend(page.get("Rotations", []))
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                return rotations

    def _call(self, operation: str, function: Callable[[], _T]) -> _T:
        try:
            return function()
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(operation, exc) from None

    def _translate(self, operation: str, exc: Exception) -> KeyProviderError:
        where = f"AWS KMS at {self.endpoint}"
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return KeyProviderError(
                f"cannot reach {where} for {operation} on key {self._key!r}: {exc}",
                hint="check the endpoint and the network; the operation can be retried",
                transient=True,
            )
        if isinstance(exc, NoCredentialsError):
            return KeyProviderError(
                f"no AWS credentials to call {operation} on {where}",
                hint="configure credentials (environment, profile or workload identity)",
            )
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            transient = code in _TRANSIENT_CODES
            hint = "the operation can be retried" if transient else None
            if code == "NotFoundException":
                hint = "check the key id, ARN or alias and the region"
            return KeyProviderError(
                f"{where} refused {operation} on key {self._key!r}: {code}: {message}",
                hint=hint,
                transient=transient,
            )
        return KeyProviderError(f"{operation} on {where} failed: {exc}")


def _encryption_context(context: bytes) -> dict[str, str]:
    return {CONTEXT_KEY: base64.b64encode(context).decode()}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _is_key_arn(key: str) -> bool:
    return key.startswith("arn:") and ":key/" in key
