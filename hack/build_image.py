"""`make image`: build SAMD's container image here, without Docker, Buildah or a registry.

Two layers, written as an OCI image-layout archive (``.local/image/samd-<version>.oci.tar``):

1. **base**: a minimal Debian root (``mmdebstrap --variant=essential`` with Python 3 and the few
   libraries the wheels need) from the Debian mirror this machine's apt sources name. Cached outside
   the repository, keyed by its package list, suite and mirrors: built once (about a minute).
2. **app**: SAMD and its dependencies as wheels (``pip wheel``), installed with ``pip install
   --no-index --find-links`` into a virtual environment at ``/opt/samd`` inside a copy of the base
   root, plus an unprivileged user (uid 65532). Rebuilt only when the project's sources or
   dependencies change.

The image runs as uid 65532 and writes nothing to its root filesystem (no byte-code is written at
run time), so it runs with ``readOnlyRootFilesystem``. Its entry point is the project's ``samd`` CLI
(``samd fetch``, ``samd serve``); the operator and the webhook run ``python -m samd.operator`` and
``python -m samd.webhook`` from the same image. The image's name is the operator's default image
(``SAMD_IMAGE`` overrides both). Needs root (``chroot``) and ``mmdebstrap`` (hack/install-node-deps).

Usage: ``hack/build-image [--print-path]``. Environment: ``SAMD_IMAGE`` (name), ``SAMD_LOCAL_DIR``,
``SAMD_CACHE_DIR``, ``SAMD_IMAGE_SUITE`` (Debian suite; default: this machine's).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hack.oci_image import Layer, write_archive, write_layer

from samd.operator.config import OperatorConfig

REPO = Path(__file__).resolve().parent.parent
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libstdc++6")  # libstdc++6: PyKCS11
BASE_FORMAT = 1  # bump when the way the base is made changes
APP_FORMAT = 1  # bump when the way the app layer is made changes
VENV = "/opt/samd"
UID = 65532
DPKG_OPTIONS = (
    # Documentation and translations are dead weight in an image; copyright notices stay.
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class ImageError(Exception):
    """A failure the user can act on; printed without a traceback."""


@dataclass(frozen=True)
class Settings:
    name: str
    local: Path
    cache: Path
    suite: str

    @classmethod
    def from_env(cls) -> Settings:
        cache_root = os.environ.get("SAMD_CACHE_DIR") or str(
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "samd"
        )
        return cls(
            name=OperatorConfig.from_env().default_image,
            local=Path(os.environ.get("SAMD_LOCAL_DIR", REPO / ".local")),
            cache=Path(cache_root) / "image",
            suite=os.environ.get("SAMD_IMAGE_SUITE") or os_codename(),
        )

    @property
    def archive(self) -> Path:
        return self.local / "image" / f"{self.name.replace('/', '_').replace(':', '-')}.oci.tar"


def log(message: str) -> None:
    print(f"[build-image] {message}", file=sys.stderr, flush=True)


def os_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip('"'):
            return value.strip('"')
    raise ImageError("cannot tell the Debian suite from /etc/os-release; set SAMD_IMAGE_SUITE")


# --- the mirror, read from this machine's apt sources ---------------------------------------------


def apt_sources(root: Path = Path("/etc/apt")) -> list[str]:
    """This machine's ``deb`` sources as one-line entries (deb822 ``.sources`` and ``.list`` files)."""
    entries: list[str] = []
    lists = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if line.startswith("deb "):
                entries.append(line)
    for path in sorted((root / "sources.list.d").glob("*.sources")):
        for paragraph in path.read_text().split("\n\n"):
            fields = _deb822(paragraph)
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            options = (
                f"[signed-by={fields['signed-by']}] " if fields.get("signed-by", "").startswith("/") else ""
            )
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    entries.append(f"deb {options}{uri} {suite} {fields.get('components', 'main')}".strip())
    if not entries:
        raise ImageError("no 'deb' entries in /etc/apt/sources.list{,.d}: mmdebstrap needs a Debian mirror")
    return entries


def _deb822(paragraph: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in paragraph.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        fields[key] = value.strip()
    return fields


# --- helpers ------------------------------------------------------------------------------------


def digest_of(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run(argv: list[str], *, what: str, env: dict[str, str] | None = None, log_file: Path) -> None:
    with log_file.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise ImageError(f"{what} failed (exit {result.returncode}); last lines of {log_file}:\n{tail}")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build holds {path}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def remove_tree(path: Path) -> None:
    """Remove a build folder; refuse if anything is mounted inside it."""
    if not path.exists():
        return
    resolved = str(path.resolve())
    with Path("/proc/self/mounts").open() as mounts:
        for line in mounts:
            target = line.split()[1]
            if target == resolved or target.startswith(resolved + "/"):
                raise ImageError(f"{target} is still mounted; unmount it before removing {path}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


# --- the base -----------------------------------------------------------------------------------


def base_key(settings: Settings, sources: list[str]) -> str:
    return digest_of(
        {
            "format": BASE_FORMAT,
            "packages": sorted(BASE_PACKAGES),
            "suite": settings.suite,
            "sources": sources,
            "dpkg": DPKG_OPTIONS,
            "arch": platform.machine(),
        }
    )


def ensure_base(settings: Settings) -> tuple[Path, Layer, str]:
    """The cached base root folder and its layer, built when its key is new."""
    sources = apt_sources()
    key = base_key(settings, sources)
    folder = settings.cache / f"base-{key}"
    meta = folder / "layer.json"
    with locked(settings.cache / ".base.lock"):
        if meta.is_file() and (folder / "rootfs").is_dir():
            log(f"base {key}: cached ({folder})")
            return folder / "rootfs", Layer.from_json(json.loads(meta.read_text())), key
        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap is not installed; run hack/install-node-deps (as root)")
        remove_tree(folder)
        work = folder.with_name(folder.name + ".work")
        remove_tree(work)
        work.mkdir(parents=True)
        build_log = work / "build.log"
        started = time.monotonic()
        log(f"base {key}: mmdebstrap {settings.suite} with {', '.join(BASE_PACKAGES)} (about a minute)")
        run(
            [
                "mmdebstrap",
                "--mode=root",
                "--variant=essential",
                f"--include={','.join(BASE_PACKAGES)}",
                *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
                settings.suite,
                str(work / "rootfs"),
                *sources,
            ],
            what="mmdebstrap",
            log_file=build_log,
        )
        layer = write_layer(work / "rootfs", work / "layer.tar.gz", exclude=_base_excluded)
        (work / "layer.json").write_text(json.dumps(layer.to_json() | {"path": str(folder / "layer.tar.gz")}))
        work.rename(folder)
        log(f"base {key}: built in {time.monotonic() - started:.0f} s")
        return folder / "rootfs", Layer.from_json(json.loads(meta.read_text())), key


def _base_excluded(rel: str) -> bool:
    # The runtime provides /dev, /proc, /sys and /run; nothing from the build belongs in them.
    top, _, rest = rel.partition("/")
    return bool(rest) and top in {"dev", "proc", "sys", "run", "tmp"}


# --- the app ------------------------------------------------------------------------------------


def source_files() -> list[Path]:
    """What `pip wheel .` reads: pyproject, README and every file of the package."""
    files = [REPO / "pyproject.toml", REPO / "README.md"]
    for folder, dirs, names in os.walk(REPO / "src"):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info"))
        files += [Path(folder) / n for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
    return files


def app_key(base: str) -> str:
    sha = hashlib.sha256()
    for path in source_files():
        sha.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest_of({"format": APP_FORMAT, "base": base, "sources": sha.hexdigest()})


def ensure_app(settings: Settings, base_root: Path, base: str) -> Layer:
    key = app_key(base)
    folder = settings.local / "image" / f"app-{key}"
    meta = folder / "layer.json"
    if meta.is_file():
        log(f"app {key}: cached ({folder})")
        return Layer.from_json(json.loads(meta.read_text()))
    for old in (settings.local / "image").glob("app-*"):
        remove_tree(old)
    folder.mkdir(parents=True)
    build_log = folder / "build.log"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=folder, prefix="work.") as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        log(f"app {key}: pip wheel (samd and its dependencies)")
        run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(REPO)],
            what="pip wheel",
            log_file=build_log,
        )
        rootfs = work / "rootfs"
        log(f"app {key}: installing {len(list(wheels.glob('*.whl')))} wheels into {VENV}")
        run(
            ["cp", "-a", "--reflink=auto", str(base_root), str(rootfs)],
            what="copy the base",
            log_file=build_log,
        )
        try:
            install_app(rootfs, wheels, build_log)
            layer = write_layer(
                rootfs, folder / "layer.tar.gz", include=[VENV.lstrip("/"), "etc/passwd", "etc/group"]
            )
        finally:
            remove_tree(rootfs)
    meta.write_text(json.dumps(layer.to_json()))
    log(f"app {key}: built in {time.monotonic() - started:.0f} s")
    return layer


def install_app(rootfs: Path, wheels: Path, build_log: Path) -> None:
    inside = rootfs / "tmp" / "wheels"
    shutil.copytree(wheels, inside)
    python = f"{VENV}/bin/python"

    def chroot(*argv: str, what: str) -> None:
        run(["chroot", str(rootfs), *argv], what=what, env=CHROOT_ENV, log_file=build_log)

    chroot("/usr/bin/python3", "-m", "venv", VENV, what="python3 -m venv")
    wheel_dir = "/tmp/wheels"  # noqa: S108 - inside the image's build root, removed below
    chroot(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        wheel_dir,
        "samd",
        what="pip install",
    )
    chroot(python, "-m", "pip", "uninstall", "--quiet", "--yes", "pip", what="removing pip from the image")
    shutil.rmtree(inside)
    # The image's own check: the entry points import, as the unprivileged user would run them.
    smoke = "import samd.cli, samd.operator.__main__, samd.webhook.__main__"
    run(
        ["chroot", "--userspec", f"{UID}:{UID}", str(rootfs), python, "-c", smoke],
        what="importing samd inside the image",
        env=CHROOT_ENV | {"PYTHONDONTWRITEBYTECODE": "1"},
        log_file=build_log,
    )
    with (rootfs / "etc" / "passwd").open("a") as passwd:
        passwd.write(f"nonroot:x:{UID}:{UID}:nonroot:/nonexistent:/usr/sbin/nologin\n")
    with (rootfs / "etc" / "group").open("a") as group:
        group.write(f"nonroot:x:{UID}:\n")


# --- the image ----------------------------------------------------------------------------------


def image_config(version: str) -> dict[str, object]:
    return {
        "User": f"{UID}:{UID}",
        "Env": [
            f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"VIRTUAL_ENV={VENV}",
            "PYTHONDONTWRITEBYTECODE=1",  # read-only root: byte-code was compiled at build time
            "PYTHONUNBUFFERED=1",
            "LANG=C.UTF-8",
        ],
        "Entrypoint": [f"{VENV}/bin/samd"],
        "Cmd": ["--help"],
        "WorkingDir": "/",
        "Labels": {
            "org.opencontainers.image.title": "samd",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.description": "SAMD: samd CLI (fetch, serve), operator and webhook",
        },
    }


def build(settings: Settings) -> Path:
    if os.geteuid() != 0:
        raise ImageError("building the image needs root (mmdebstrap and chroot); run it as root")
    started = time.monotonic()
    base_root, base_layer, base = ensure_base(settings)
    app_layer = ensure_app(settings, base_root, base)
    version = settings.name.rpartition(":")[2] if ":" in settings.name else "latest"
    digest = write_archive(
        settings.archive,
        name=settings.name,
        layers=[base_layer, app_layer],
        config=image_config(version),
        history=[f"mmdebstrap --variant=essential --include={','.join(BASE_PACKAGES)}", f"samd in {VENV}"],
    )
    size = settings.archive.stat().st_size / 1e6
    log(
        f"{settings.name} ({digest[:19]}): {settings.archive} ({size:.0f} MB) in {time.monotonic() - started:.0f} s"
    )
    return settings.archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/build-image", description=__doc__.split("\n\n")[0])
    parser.add_argument("--print-path", action="store_true", help="print only the archive's path on stdout")
    args = parser.parse_args(argv)
    try:
        archive = build(Settings.from_env())
    except ImageError as error:
        print(f"build-image: error: {error}", file=sys.stderr)
        return 1
    print(archive if args.print_path else f"image archive: {archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
