"""S3 bucket posture: is default encryption on, and is public access blocked? Checked, not assumed.

Each problem becomes a finding: a sentence saying what is wrong and how to fix it. A setting
that cannot be read (no permission) is a finding too, never a silent pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from samd.errors import StorageError, UsageError
from samd.storage.defaults import NETWORK_TIMEOUT
from samd.storage.guard import AddressPolicy
from samd.storage.retry import DEFAULT_RETRY, RetryPolicy
from samd.storage.uri import S3Location, parse_artifact_uri

# boto3 and botocore (through samd.storage.s3) are imported when a posture is checked, not with
# this module: `import samd.storage` must stay light for `samd fetch` from a local file.

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PUBLIC_ACCESS_BLOCK_FLAGS = (
    "BlockPublicAcls",
    "IgnorePublicAcls",
    "BlockPublicPolicy",
    "RestrictPublicBuckets",
)
_PUBLIC_GRANTEES = {
    "http://acs.amazonaws.com/groups/global/AllUsers": "everyone",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers": "any AWS account",
}


@dataclass(frozen=True)
class BucketPosture:
    """What a bucket's settings say about the artifacts stored in it."""

    bucket: str
    encrypted: bool
    """Default server-side encryption is configured (and could be read)."""
    encryption: str | None
    """The default algorithm: ``AES256`` (SSE-S3), ``aws:kms`` or ``aws:kms:dsse``."""
    kms_key_id: str | None
    public_access_blocked: bool
    """All four PublicAccessBlock flags are on for the bucket."""
    missing_public_access_blocks: tuple[str, ...]
    policy_public: bool | None
    """The bucket policy grants public access; None when it could not be read."""
    acl_public: bool | None
    """The bucket ACL grants access to everyone or any AWS account; None when it could not be read."""
    findings: tuple[str, ...] = field(default=())

    @property
    def secure(self) -> bool:
        """Encrypted by default, public access blocked, and no public policy or ACL observed.

        With all four blocks on, S3 ignores public ACLs and restricts public policies, so a
        policy or ACL that could not be read does not make the bucket insecure.
        """
        return (
            self.encrypted
            and self.public_access_blocked
            and self.policy_public is not True
            and self.acl_public is not True
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "secure": self.secure,
            "encrypted": self.encrypted,
            "encryption": self.encryption,
            "kmsKeyId": self.kms_key_id,
            "publicAccessBlocked": self.public_access_blocked,
            "missingPublicAccessBlocks": list(self.missing_public_access_blocks),
            "policyPublic": self.policy_public,
            "aclPublic": self.acl_public,
            "findings": list(self.findings),
        }


@dataclass(frozen=True)
class _Unreadable:
    code: str


def check_bucket_posture(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float = NETWORK_TIMEOUT,
    client: S3Client | None = None,
    address_policy: AddressPolicy | None = None,
) -> BucketPosture:
    """Read the posture of the bucket in ``uri`` (``s3://bucket`` or ``s3://bucket/key``).

    Raises `StorageError` when the bucket does not exist, cannot be reached, or the caller may
    not even see it; every other unreadable setting is reported as a finding.
    """
    location = parse_artifact_uri(uri, require_key=False)
    if not isinstance(location, S3Location):
        raise UsageError(f"the posture check applies to s3:// buckets, not {location}")
    from samd.storage.s3 import call_s3, make_s3_client  # noqa: PLC0415 - see the imports

    policy = retry or DEFAULT_RETRY
    s3 = client or make_s3_client(
        endpoint_url=endpoint_url,
        region=region,
        timeout=timeout,
        address_policy=address_policy,
        max_attempts=policy.max_attempts,
    )
    bucket = location.bucket
    target = f"s3://{bucket}"
    try:
        call_s3(lambda: s3.head_bucket(Bucket=bucket), client=s3, action="check", uri=target)
    except StorageError as error:
        if _error_code(error) in ("404", "NoSuchBucket"):
            raise StorageError(
                f"cannot check {target}: the bucket does not exist", hint="check the bucket name"
            ) from error
        raise
    findings: list[str] = []

    def observe(operation: Callable[[], Any], absent_code: str | None) -> Any:
        """The response; None when the setting is absent; `_Unreadable` when it may not be read."""
        try:
            return call_s3(operation, client=s3, action="check", uri=target)
        except StorageError as error:
            code = _error_code(error)
            if error.transient or code is None:
                raise
            return None if code == absent_code else _Unreadable(code or "unknown error")

    # Default encryption.
    encrypted, algorithm, kms_key_id = False, None, None
    answer = observe(
        lambda: s3.get_bucket_encryption(Bucket=bucket), "ServerSideEncryptionConfigurationNotFoundError"
    )
    if isinstance(answer, _Unreadable):
        findings.append(
            f"could not read the default encryption of {target} ({answer.code}); "
            "grant s3:GetEncryptionConfiguration to check it"
        )
    elif answer is not None:
        for rule in answer.get("ServerSideEncryptionConfiguration", {}).get("Rules", []):
            default = rule.get("ApplyServerSideEncryptionByDefault", {})
            if default.get("SSEAlgorithm"):
                encrypted, algorithm = True, str(default["SSEAlgorithm"])
                kms_key_id = default.get("KMSMasterKeyID")
                break
    if not encrypted and not isinstance(answer, _Unreadable):
        findings.append(
            f"default encryption is off for {target}: objects written without server-side encryption "
            "are stored unencrypted; turn it on (put-bucket-encryption, SSE-KMS preferred)"
        )

    # Public access block: all four flags, or public ACLs and policies can still expose objects.
    missing: tuple[str, ...] = PUBLIC_ACCESS_BLOCK_FLAGS
    answer = observe(
        lambda: s3.get_public_access_block(Bucket=bucket), "NoSuchPublicAccessBlockConfiguration"
    )
    if isinstance(answer, _Unreadable):
        findings.append(
            f"could not read the public access block of {target} ({answer.code}); "
            "grant s3:GetBucketPublicAccessBlock to check it"
        )
    else:
        flags = answer.get("PublicAccessBlockConfiguration", {}) if answer is not None else {}
        missing = tuple(flag for flag in PUBLIC_ACCESS_BLOCK_FLAGS if not flags.get(flag, False))
        if answer is None:
            findings.append(
                f"public access is not blocked for {target}: the bucket has no PublicAccessBlock "
                f"configuration; turn on all four flags ({', '.join(PUBLIC_ACCESS_BLOCK_FLAGS)})"
            )
        elif missing:
            findings.append(
                f"public access is only partly blocked for {target}: {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} off; turn on all four flags"
            )
    blocked = not missing

    # Bucket policy.
    policy_public: bool | None
    answer = observe(lambda: s3.get_bucket_policy_status(Bucket=bucket), "NoSuchBucketPolicy")
    if isinstance(answer, _Unreadable):
        policy_public = _policy_public_from_document(s3, bucket)
    else:
        policy_public = bool(answer.get("PolicyStatus", {}).get("IsPublic")) if answer is not None else False
    if policy_public:
        findings.append(
            f"the bucket policy of {target} grants access to everyone"
            + ("" if blocked else "; remove the public statements or turn on RestrictPublicBuckets")
        )
    elif policy_public is None and not blocked:
        findings.append(f"could not read the bucket policy of {target}; it may grant public access")

    # Bucket ACL.
    acl_public: bool | None = None
    answer = observe(lambda: s3.get_bucket_acl(Bucket=bucket), None)
    if isinstance(answer, _Unreadable):
        if not blocked:
            findings.append(f"could not read the ACL of {target} ({answer.code}); it may grant public access")
    elif answer is not None:
        granted = sorted(
            {
                f"{grant.get('Permission', '?')} to {_PUBLIC_GRANTEES[grantee_uri]}"
                for grant in answer.get("Grants", [])
                if (grantee_uri := grant.get("Grantee", {}).get("URI")) in _PUBLIC_GRANTEES
            }
        )
        acl_public = bool(granted)
        if granted:
            findings.append(
                f"the ACL of {target} grants {', '.join(granted)}"
                + ("" if blocked else "; remove these grants or turn on IgnorePublicAcls")
            )

    return BucketPosture(
        bucket=bucket,
        encrypted=encrypted,
        encryption=algorithm,
        kms_key_id=kms_key_id,
        public_access_blocked=blocked,
        missing_public_access_blocks=missing,
        policy_public=policy_public,
        acl_public=acl_public,
        findings=tuple(findings),
    )


def _policy_public_from_document(s3: S3Client, bucket: str) -> bool | None:
    """When GetBucketPolicyStatus is unavailable: public if an Allow statement names any principal
    without conditions. None when the policy cannot be read either."""
    from samd.storage.s3 import call_s3  # noqa: PLC0415

    try:
        response = call_s3(
            lambda: s3.get_bucket_policy(Bucket=bucket), client=s3, action="check", uri=f"s3://{bucket}"
        )
    except StorageError as error:
        if _error_code(error) == "NoSuchBucketPolicy":
            return False
        if error.transient:
            raise
        return None
    try:
        document = json.loads(response["Policy"])
    except (KeyError, ValueError):
        return None
    statements = document.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    return any(_statement_is_public(statement) for statement in statements if isinstance(statement, dict))


def _statement_is_public(statement: dict[str, Any]) -> bool:
    if statement.get("Effect") != "Allow" or statement.get("Condition"):
        return False
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if isinstance(principal, dict):
        aws = principal.get("AWS")
        return aws == "*" or (isinstance(aws, list) and "*" in aws)
    return False


def _error_code(error: StorageError) -> str | None:
    """The S3 error code behind ``error``; None when it did not come from an S3 answer."""
    from botocore.exceptions import ClientError  # noqa: PLC0415

    cause = error.__cause__
    if not isinstance(cause, ClientError):
        return None
    return str(cause.response.get("Error", {}).get("Code", ""))
