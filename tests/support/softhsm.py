"""A real SoftHSM2 token in a temporary directory, for PKCS#11 tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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

    def generate_ec_key(self, label: str, key_id: str = "01") -> None:
        """Create an EC P-256 key pair on the token with pkcs11-tool."""
        subprocess.run(
            [
                "pkcs11-tool",
                "--module",
                self.module,
                "--login",
                "--pin",
                self.pin,
                "--token-label",
                self.token_label,
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--label",
                label,
                "--id",
                key_id,
            ],
            check=True,
            capture_output=True,
            env=self.env(),
        )

    def generate_aes_key(self, label: str, key_id: str = "02") -> None:
        """Create an extractable=false AES-256 secret key on the token."""
        subprocess.run(
            [
                "pkcs11-tool",
                "--module",
                self.module,
                "--login",
                "--pin",
                self.pin,
                "--token-label",
                self.token_label,
                "--keygen",
                "--key-type",
                "AES:32",
                "--label",
                label,
                "--id",
                key_id,
            ],
            check=True,
            capture_output=True,
            env=self.env(),
        )


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
