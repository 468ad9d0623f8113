"""Listing and hashing the files of a model on disk, refusing what could escape or deceive.

A model is a regular file (its one resource is named "."), or a directory whose regular files
are named by their POSIX path relative to it. Refused, whatever the caller asks: symlinks that
leave the model directory, symlinks to directories, dangling symlinks, and special files
(FIFOs, sockets, devices). Symlinks to files inside the model are refused unless allowed (they
are then hashed under the link's name, as model_signing does with `allow_symlinks`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from samd.errors import SamdError, UsageError, VerificationError
from samd.signing.model import MAX_RESOURCES, SINGLE_FILE_RESOURCE, is_under_any
from samd.signing.statement import check_resource_name


@dataclass(frozen=True)
class ModelFiles:
    root: Path  # the model path as given, resolved
    files: dict[str, Path]  # resource name -> path to read (a symlink's resolved target)

    @property
    def single_file(self) -> bool:
        return set(self.files) == {SINGLE_FILE_RESOURCE}


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def list_model_files(
    model: Path,
    *,
    ignored_paths: Sequence[str] = (),
    excluded: Collection[str] = (),
    allow_symlinks: bool = False,
    error: type[SamdError] = VerificationError,
) -> ModelFiles:
    """The model's files; `ignored_paths` (and directories under them) and `excluded` names are skipped."""
    if not os.path.lexists(model):
        raise UsageError(f"the model {model} does not exist")
    root = os.path.realpath(model)
    if os.path.isfile(root):
        return ModelFiles(root=Path(root), files={SINGLE_FILE_RESOURCE: Path(root)})
    if not os.path.isdir(root):
        raise error(f"the model {model} is neither a regular file nor a directory")

    files: dict[str, Path] = {}
    pending: list[tuple[str, str]] = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as failure:
            raise error(f"cannot list {directory}: {failure.strerror or failure}") from failure
        for entry in entries:
            name = prefix + entry.name
            if name in excluded or is_under_any(name, ignored_paths):
                continue
            try:
                check_resource_name(name, where="the model")
            except VerificationError as refused:
                raise error(refused.message) from refused
            if entry.is_symlink():
                files[name] = _checked_symlink(entry.path, name, root, allow_symlinks, error)
            elif entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, name + "/"))
            elif entry.is_file(follow_symlinks=False):
                files[name] = Path(entry.path)
            else:
                raise error(
                    f"the model holds {name!r}, which is not a regular file (a FIFO, socket or device)"
                )
            if len(files) > MAX_RESOURCES:
                raise error(f"the model holds more than {MAX_RESOURCES} files")
    return ModelFiles(root=Path(root), files=files)


def _checked_symlink(path: str, name: str, root: str, allow_symlinks: bool, error: type[SamdError]) -> Path:
    target = os.path.realpath(path)
    if not _inside(target, root):
        raise error(
            f"the model holds a symbolic link {name!r} that points outside the model directory",
            hint="copy the model with links resolved (e.g. `cp -rL`) or remove the link",
        )
    if os.path.isdir(target):
        raise error(f"the model holds a symbolic link to a directory, {name!r}, which is not supported")
    if not os.path.isfile(target):
        raise error(f"the model holds a symbolic link {name!r} that does not point to a regular file")
    if not allow_symlinks:
        raise error(
            f"the model holds a symbolic link {name!r}, and symbolic links are not allowed",
            hint="signatures made without allow_symlinks refuse links; copy the model with `cp -rL`",
        )
    return Path(target)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, refusing to follow a symlink swapped in since it was listed."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        with os.fdopen(os.open(path, flags), "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as failure:
        raise VerificationError(
            f"cannot read the model file {path}: {failure.strerror or failure}"
        ) from failure


def hash_files(files: Mapping[str, Path]) -> dict[str, str]:
    """Name -> hex SHA-256, several files at a time (hashlib releases the GIL on large reads)."""
    if not files:
        return {}
    names = sorted(files)
    workers = max(1, min(len(names), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="samd-hash") as pool:
        digests = list(pool.map(sha256_file, (files[name] for name in names)))
    return dict(zip(names, digests, strict=True))
