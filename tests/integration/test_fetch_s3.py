"""`samd encrypt` to S3 and `samd fetch` from S3 with an AWS KMS key, against a real local server (moto)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import boto3
import pytest

from samd.cli.commands import encrypt_to_storage
from samd.errors import IntegrityError
from samd.keys import provider_from_uri
from tests.support.moto_server import MotoServer
from tests.unit.test_cli import Result, run, tree, write_model

pytestmark = pytest.mark.integration


class Cloud:
    """A bucket and a KMS key on the local server, a signed model, and the CLI's key and signer."""

    def __init__(self, capsys: pytest.CaptureFixture[str], root: Path) -> None:
        self.capsys = capsys
        self.s3 = boto3.client("s3")
        self.bucket = f"models-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"
        self.s3.create_bucket(Bucket=self.bucket)
        key_id = boto3.client("kms").create_key(Description="samd fetch test")["KeyMetadata"]["KeyId"]
        self.key = f"aws-kms://{key_id}"
        self.model = root / "model"
        self.model.mkdir(parents=True)
        write_model(self.model)
        self.private_key = root / "signer.pem"
        self.public_key = root / "signer.pub.pem"
        self.signature = root / "model.sig"
        assert run(capsys, "keygen", "--signing-key", self.private_key).code == 0
        assert run(capsys, "sign", self.model, "--private-key", self.private_key).code == 0

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def objects(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def upload_signature(self) -> str:
        self.s3.put_object(Bucket=self.bucket, Key="fraud/v3.sig", Body=self.signature.read_bytes())
        return self.uri("fraud/v3.sig")

    def fetch(self, artifact: str, signature: str, output: Path, *extra: str) -> Result:
        return run(
            self.capsys,
            "fetch",
            artifact,
            "--signature",
            signature,
            "--public-key",
            str(self.public_key),
            "--key",
            self.key,
            "--output",
            str(output),
            *extra,
        )


@pytest.fixture
def cloud(aws_env: MotoServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cloud:
    return Cloud(capsys, tmp_path)


def test_encrypt_to_s3_then_fetch_from_s3(cloud: Cloud, tmp_path: Path) -> None:
    artifact = cloud.uri("fraud/v3.samd")
    encrypted = run(
        cloud.capsys, "encrypt", cloud.model, "--key", cloud.key, "--output", artifact, "--sse", "AES256"
    )
    signature = cloud.upload_signature()

    fetched = cloud.fetch(artifact, signature, tmp_path / "out", "--json")

    assert encrypted.code == 0, encrypted.err
    assert fetched.code == 0, fetched.err
    assert tree(tmp_path / "out") == tree(cloud.model)
    head = cloud.s3.head_object(Bucket=cloud.bucket, Key="fraud/v3.samd")
    assert head["ServerSideEncryption"] == "AES256"
    assert fetched.json()["signer"].startswith("sha256:")
    inspected = run(cloud.capsys, "inspect", artifact, "--json").json()
    assert inspected["header"]["key"]["provider"] == "aws-kms"


def test_fetch_of_a_tampered_s3_object_leaves_nothing(cloud: Cloud, tmp_path: Path) -> None:
    artifact = cloud.uri("fraud/v3.samd")
    assert run(cloud.capsys, "encrypt", cloud.model, "--key", cloud.key, "--output", artifact).code == 0
    body = bytearray(cloud.s3.get_object(Bucket=cloud.bucket, Key="fraud/v3.samd")["Body"].read())
    body[len(body) // 2] ^= 0x80
    cloud.s3.put_object(Bucket=cloud.bucket, Key="fraud/v3.samd", Body=bytes(body))
    output = tmp_path / "out"

    result = cloud.fetch(artifact, cloud.upload_signature(), output)

    assert result.code == 4
    assert "failed authentication" in result.err
    assert not output.exists()
    assert [entry.name for entry in tmp_path.iterdir() if "staging" in entry.name] == []


def test_fetch_of_a_missing_s3_object_is_a_storage_error(cloud: Cloud, tmp_path: Path) -> None:
    result = cloud.fetch(cloud.uri("nope.samd"), cloud.upload_signature(), tmp_path / "out")
    assert result.code == 6
    assert "nope.samd" in result.err
    assert not (tmp_path / "out").exists()


def test_fetch_with_another_kms_key_is_a_key_error(cloud: Cloud, tmp_path: Path) -> None:
    artifact = cloud.uri("fraud/v3.samd")
    assert run(cloud.capsys, "encrypt", cloud.model, "--key", cloud.key, "--output", artifact).code == 0
    cloud.key = f"aws-kms://{boto3.client('kms').create_key()['KeyMetadata']['KeyId']}"

    result = cloud.fetch(artifact, cloud.upload_signature(), tmp_path / "out")

    assert result.code == 5
    assert not (tmp_path / "out").exists()


class FailingSource(io.RawIOBase):
    """Yields `good` bytes, then fails like a disk error in the middle of the model."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise IntegrityError("simulated failure while reading the model")
        count = min(len(buffer), self.left)
        buffer[:count] = b"m" * count
        self.left -= count
        return count


def test_a_failed_encryption_stores_no_object(cloud: Cloud) -> None:
    provider = provider_from_uri(cloud.key)
    try:
        # Past the first multipart part (8 MiB), so the upload has started before the failure.
        with pytest.raises(IntegrityError, match="simulated failure"):
            encrypt_to_storage(
                FailingSource(20 << 20),  # type: ignore[arg-type]
                cloud.uri("broken.samd"),
                provider,
                {"samd.content": "file", "samd.name": "m.bin"},
                1 << 20,
                None,
                None,
                None,
            )
    finally:
        provider.close()
    assert cloud.objects() == []
    assert cloud.s3.list_multipart_uploads(Bucket=cloud.bucket).get("Uploads", []) == []
