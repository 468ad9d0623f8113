"""Write OCI images without a registry or a daemon: layer tars from folders, and an image-layout archive.

An OCI image-layout archive is a tar holding ``oci-layout``, ``index.json`` and ``blobs/sha256/*``
(one manifest, one config, one gzip tar per layer). The index's ``io.containerd.image.name``
annotation lets ``ctr images import`` tag the image; ``org.opencontainers.image.ref.name`` is the
tag other tools (skopeo, podman) read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
EPOCH = 0  # every entry's mtime: layers depend on content only


@dataclass(frozen=True)
class Layer:
    """A gzip layer tar on disk with its digests (``digest`` of the gzip, ``diff_id`` of the tar)."""

    path: Path
    digest: str
    diff_id: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "digest": self.digest, "diff_id": self.diff_id, "size": self.size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layer:
        return cls(Path(data["path"]), data["digest"], data["diff_id"], int(data["size"]))


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: io.BufferedIOBase | io.RawIOBase | Any) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.sink.write(view)
        self.size += len(view)
        return len(view)


def normalized_name(name: str) -> str:
    """The name containerd's CRI looks up for an image reference (``samd:0.1.0`` -> docker.io/library/...)."""
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def write_layer(
    root: Path,
    out: Path,
    *,
    include: Sequence[str] | None = None,
    exclude: Callable[[str], bool] = lambda _: False,
    compresslevel: int = 3,
) -> Layer:
    """Tar ``root`` (or only the ``include`` paths under it, with their parent folders) into a gzip layer.

    Entries are sorted and their times set to ``EPOCH`` so that the same files give the same digest.
    Owners and modes are kept as they are on disk (the builder runs as root).
    """
    names = sorted(_walk(root, include, exclude))
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=compresslevel, mtime=EPOCH) as gz:
            uncompressed = _Hashing(gz)
            with tarfile.open(fileobj=uncompressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in names:
                    info = tar.gettarinfo(str(root / name), arcname=name)
                    info.mtime = EPOCH
                    info.uname = info.gname = ""
                    if info.isreg():
                        with (root / name).open("rb") as data:
                            tar.addfile(info, data)
                    else:
                        tar.addfile(info)
    tmp.replace(out)
    return Layer(
        path=out,
        digest=f"sha256:{compressed.sha.hexdigest()}",
        diff_id=f"sha256:{uncompressed.sha.hexdigest()}",
        size=compressed.size,
    )


def _walk(root: Path, include: Sequence[str] | None, exclude: Callable[[str], bool]) -> Iterable[str]:
    seen: set[str] = set()

    def parents(rel: str) -> Iterable[str]:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            yield "/".join(parts[:i])

    tops = list(include) if include is not None else [p.name for p in root.iterdir()]
    for top in tops:
        for parent in parents(top):
            if parent not in seen:
                seen.add(parent)
                yield parent
        start = root / top
        if exclude(top):
            continue
        seen.add(top)
        yield top
        if start.is_dir() and not start.is_symlink():
            for folder, dirs, files in os.walk(start):
                base = Path(folder).relative_to(root).as_posix()
                dirs[:] = [d for d in dirs if not exclude(f"{base}/{d}")]
                for entry in [*dirs, *files]:
                    rel = f"{base}/{entry}"
                    if not exclude(rel) and _storable(root / rel):
                        yield rel


def _storable(path: Path) -> bool:
    mode = path.lstat().st_mode
    return not (stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode))


def _blob(data: bytes) -> tuple[str, bytes]:
    return f"sha256:{hashlib.sha256(data).hexdigest()}", data


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_archive(
    out: Path,
    *,
    name: str,
    layers: Sequence[Layer],
    config: dict[str, Any],
    history: Sequence[str],
    architecture: str = "amd64",
) -> str:
    """Write an OCI image-layout tar at ``out``; return the manifest digest."""
    image_config = {
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": step, "comment": "samd hack/build-image"}
            for step in history
        ],
    }
    config_digest, config_bytes = _blob(_canonical(image_config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size} for layer in layers
        ],
    }
    manifest_digest, manifest_bytes = _blob(_canonical(manifest))
    tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": architecture, "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": normalized_name(name),
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    tmp = out.with_suffix(out.suffix + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_bytes(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
            tar.addfile(info, io.BytesIO(data))

        for folder in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        add_bytes("oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
        add_bytes("index.json", _canonical(index))
        add_bytes(f"blobs/sha256/{manifest_digest.removeprefix('sha256:')}", manifest_bytes)
        add_bytes(f"blobs/sha256/{config_digest.removeprefix('sha256:')}", config_bytes)
        for layer in layers:
            info = tarfile.TarInfo(f"blobs/sha256/{layer.digest.removeprefix('sha256:')}")
            info.size, info.mtime, info.mode = layer.size, EPOCH, 0o644
            with layer.path.open("rb") as data:
                tar.addfile(info, data)
    tmp.replace(out)
    return manifest_digest
