"""The image builder's pure parts: the mirror read from apt sources, layers and the OCI archive."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from hack.build_image import apt_sources, base_key, image_config
from hack.oci_image import normalized_name, write_archive, write_layer

pytestmark = pytest.mark.unit


def test_apt_sources_reads_deb822_and_one_line_files(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# a comment\ndeb http://mirror.invalid/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb deb-src\n# snapshot comment\nURIs: http://a.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n"
        "Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nEnabled: no\n"
    )
    assert apt_sources(tmp_path) == [
        "deb http://mirror.invalid/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/k.gpg] http://a.invalid/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/k.gpg] http://a.invalid/debian bookworm-updates main",
    ]


def test_no_sources_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no 'deb' entries"):
        apt_sources(tmp_path)


def test_base_key_follows_the_mirror_and_suite() -> None:
    from hack.build_image import Settings  # noqa: PLC0415

    settings = Settings(name="samd:0.1.0", local=Path("/x"), cache=Path("/y"), suite="bookworm")
    key = base_key(settings, ["deb http://a.invalid/debian bookworm main"])
    assert key == base_key(settings, ["deb http://a.invalid/debian bookworm main"])
    assert key != base_key(settings, ["deb http://b.invalid/debian bookworm main"])


def test_containerd_names() -> None:
    assert normalized_name("samd:0.1.0") == "docker.io/library/samd:0.1.0"
    assert normalized_name("acme/samd:1") == "docker.io/acme/samd:1"
    assert normalized_name("registry.example:5000/samd:1") == "registry.example:5000/samd:1"


def test_layers_are_reproducible_and_the_archive_is_a_valid_layout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "opt" / "app").mkdir(parents=True)
    (root / "opt" / "app" / "run").write_text("#!/bin/sh\n")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc" / "other").write_text("not in the layer\n")
    first = write_layer(root, tmp_path / "a.tar.gz", include=["opt/app", "etc/passwd"])
    second = write_layer(root, tmp_path / "b.tar.gz", include=["opt/app", "etc/passwd"])
    assert (first.digest, first.diff_id) == (second.digest, second.diff_id)
    raw = gzip.decompress((tmp_path / "a.tar.gz").read_bytes())
    assert first.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert tar.getnames() == ["etc", "etc/passwd", "opt", "opt/app", "opt/app/run"]

    archive = tmp_path / "image.oci.tar"
    digest = write_archive(
        archive, name="samd:0.1.0", layers=[first], config=image_config("0.1.0"), history=["x"]
    )
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        entry = index["manifests"][0]
        assert entry["digest"] == digest
        assert entry["annotations"]["io.containerd.image.name"] == "docker.io/library/samd:0.1.0"
        manifest_bytes = tar.extractfile(f"blobs/sha256/{digest[7:]}").read()
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
        manifest = json.loads(manifest_bytes)
        config = json.load(tar.extractfile(f"blobs/sha256/{manifest['config']['digest'][7:]}"))  # type: ignore[arg-type]
        assert config["rootfs"]["diff_ids"] == [first.diff_id]
        assert config["config"]["User"] == "65532:65532"
        assert manifest["layers"][0]["size"] == first.size
