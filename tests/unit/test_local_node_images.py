"""hack/local-node's image import: an archive is imported unless containerd holds it under its name."""

from __future__ import annotations

from pathlib import Path

import pytest
from hack import local_node
from hack.local_node import NodeError, NodeSettings, import_images
from hack.oci_image import write_archive, write_layer

pytestmark = pytest.mark.unit

HEADER = "REF TYPE DIGEST SIZE PLATFORMS LABELS"
MEDIA = "application/vnd.oci.image.manifest.v1+json"


def archive(tmp_path: Path, name: str, content: bytes) -> tuple[Path, str]:
    root = tmp_path / f"root-{len(content)}"
    root.mkdir()
    (root / "file").write_bytes(content)
    layer = write_layer(root, tmp_path / f"layer-{len(content)}.tar.gz")
    out = tmp_path / f"image-{len(content)}.oci.tar"
    digest = write_archive(out, name=name, layers=[layer], config={"User": "65532"}, history=["x"])
    return out, digest


class FakeContainerd:
    """`ctr images ls|import` over a name -> digest table; `lies` makes an import leave the table alone."""

    def __init__(self, held: dict[str, str], archives: dict[str, tuple[str, str]], *, lies: bool = False):
        self.held, self.archives, self.lies = held, archives, lies
        self.imported: list[str] = []

    def __call__(self, settings: NodeSettings, *args: str, check: bool = True) -> str:
        del settings, check
        if args[:2] == ("images", "ls"):
            rows = [f"{name} {MEDIA} {digest} 1MiB linux/amd64 -" for name, digest in self.held.items()]
            return "\n".join([HEADER, *rows]) + "\n"
        assert args[:2] == ("images", "import")
        self.imported.append(Path(args[-1]).name)
        if not self.lies:
            name, digest = self.archives[args[-1]]
            self.held[name] = digest
        return ""


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> NodeSettings:
    monkeypatch.setenv("SAMD_LOCAL_DIR", str(tmp_path / "local"))
    return NodeSettings.from_env()


def test_a_rebuilt_image_under_the_same_name_is_imported_and_an_unchanged_one_is_not(
    tmp_path: Path, settings: NodeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, old_digest = archive(tmp_path, "samd:0.1.0", b"old")
    new, new_digest = archive(tmp_path, "samd:0.1.0", b"rebuilt")
    name = "docker.io/library/samd:0.1.0"
    fake = FakeContainerd({name: old_digest}, {str(old): (name, old_digest), str(new): (name, new_digest)})
    monkeypatch.setattr(local_node, "ctr", fake)

    import_images(settings, [old])
    assert fake.imported == []
    import_images(settings, [new])
    assert fake.imported == [new.name]
    assert fake.held[name] == new_digest


def test_the_same_content_under_a_new_name_is_imported(
    tmp_path: Path, settings: NodeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, digest = archive(tmp_path, "registry.example/samd:0.1.0", b"same")
    fake = FakeContainerd(
        {"docker.io/library/samd:0.1.0": digest}, {str(image): ("registry.example/samd:0.1.0", digest)}
    )
    monkeypatch.setattr(local_node, "ctr", fake)
    import_images(settings, [image])
    assert fake.imported == [image.name]


def test_an_import_that_leaves_the_old_image_under_the_name_is_a_clear_error(
    tmp_path: Path, settings: NodeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old, old_digest = archive(tmp_path, "samd:0.1.0", b"old")
    new, new_digest = archive(tmp_path, "samd:0.1.0", b"rebuilt")
    name = "docker.io/library/samd:0.1.0"
    fake = FakeContainerd({name: old_digest}, {str(new): (name, new_digest)}, lies=True)
    monkeypatch.setattr(local_node, "ctr", fake)
    with pytest.raises(NodeError, match=f"holds {name} as {old_digest}.*images rm"):
        import_images(settings, [new])
