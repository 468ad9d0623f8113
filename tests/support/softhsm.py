"""A real SoftHSM2 token in a temporary directory, for PKCS#11 tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

SOFTHSM_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class SoftHSMToken:
    module: str
    token_label: str
    pin: str
    so_pin: str
    conf: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def uri(self, object_label: str) -> str:
        """A PKCS#11 URI (RFC 7512) for an object on this token, as model_signing takes it."""
        return (
            f"pkcs11:token={self.token_label};object={object_label}"
            f"?module-path={self.module}&pin-value={self.pin}"
        )

    def _pkcs11_tool(self, *args: str, login: bool = True) -> None:
        credentials = ["--login", "--pin", self.pin] if login else []
        subprocess.run(
            ["pkcs11-tool", "--module", self.module, *credentials, "--token-label", self.token_label, *args],
            check=True,
            capture_output=True,
            env=self.env(),
        )

    def generate_ec_key(self, label: str, key_id: str = "01") -> None:
        """Create an EC P-256 key pair on the token with pkcs11-tool."""
        self._pkcs11_tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", key_id)

    def generate_aes_key(self, label: str, key_id: str = "02") -> None:
        """Create an extractable=false AES-256 secret key on the token."""
        self._pkcs11_tool("--keygen", "--key-type", "AES:32", "--label", label, "--id", key_id)

    def export_public_key(self, label: str, directory: Path) -> Path:
        """The token's public key `label` as a PEM file, read with pkcs11-tool (not with the code under test)."""
        der = directory / f"{label}.der"
        self._pkcs11_tool(
            "--read-object", "--type", "pubkey", "--label", label, "--output-file", str(der), login=False
        )
        pem = directory / f"{label}.pub.pem"
        public_key = serialization.load_der_public_key(der.read_bytes())
        pem.write_bytes(
            public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return pem


def softhsm_module() -> str:
    for candidate in SOFTHSM_MODULE_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    raise RuntimeError(
        "SoftHSM2 is not installed: run `hack/install-system-deps` (apt-get install softhsm2 opensc)"
    )


def create_token(directory: Path, label: str = "samd-test", pin: str = "1234") -> SoftHSMToken:
    """Initialise a fresh SoftHSM2 token whose state lives only in `directory`."""
    if shutil.which("softhsm2-util") is None or shutil.which("pkcs11-tool") is None:
        raise RuntimeError("softhsm2-util or pkcs11-tool is missing: run `hack/install-system-deps`")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    token = SoftHSMToken(module=softhsm_module(), token_label=label, pin=pin, so_pin="5678", conf=conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", token.so_pin],
        check=True,
        capture_output=True,
        env=token.env(),
    )
    return token
