"""Packing a model directory as a deterministic tar stream, and unpacking hostile archives safely."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from samd.errors import IntegrityError, StorageError, UsageError
from samd.modelpack import (
    BLOCK_SIZE,
    DirectoryWriter,
    TarStreamReader,
    UnpackLimits,
    collect_model_files,
    pack_directory,
    safe_member_name,
    unpack_chunks,
)

pytestmark = pytest.mark.unit


def make_model(root: Path) -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(70_000))
    (root / "config.json").write_text('{"layers": 3}\n')
    (root / "sub" / "deep" / "tokenizer.txt").write_text("a b c\n")
    (root / "empty.txt").write_bytes(b"")
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An archive built by the standard library, for hostile or foreign members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


# --- packing ---------------------------------------------------------------------------------


def test_pack_lists_files_sorted_and_leaves_out_git_metadata(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (model / ".gitignore").write_text("*.tmp\n")

    names = [item.name for item in collect_model_files(model)]

    assert names == ["config.json", "empty.txt", "sub/deep/tokenizer.txt", "weights.bin"]


def test_pack_honours_ignore_paths_relative_or_absolute(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    (model / "model.sig").write_text("{}")

    names = [item.name for item in collect_model_files(model, ignore=["sub", str(model / "model.sig")])]

    assert names == ["config.json", "empty.txt", "weights.bin"]


def test_pack_refuses_an_ignore_path_outside_the_model(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    with pytest.raises(UsageError, match="outside the model directory"):
        collect_model_files(model, ignore=[str(tmp_path / "elsewhere")])


def test_packed_archive_reads_back_with_the_standard_library(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    data = pack_directory(model).read()

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        contents = {member.name: archive.extractfile(member).read() for member in archive.getmembers()}

    assert contents == read_tree(model)


def test_packing_is_deterministic_whatever_the_mtimes_and_creation_order(tmp_path: Path) -> None:
    first = tmp_path / "first"
    second = tmp_path / "second"
    first.mkdir()
    second.mkdir()
    payload = {"b.bin": b"bbb", "a/z.txt": b"zz", "a/b.txt": b"ab", "c": b""}
    for name, data in payload.items():
        (first / name).parent.mkdir(parents=True, exist_ok=True)
        (first / name).write_bytes(data)
    for name, data in reversed(payload.items()):
        (second / name).parent.mkdir(parents=True, exist_ok=True)
        (second / name).write_bytes(data)
        os.utime(second / name, (1_000_000, 1_000_000))

    assert pack_directory(first).read() == pack_directory(second).read()


def test_pack_stream_never_returns_a_short_read_before_the_end(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    stream = pack_directory(model)
    expected_total = stream.total_size
    buffer = bytearray(4096)
    sizes = []
    while count := stream.readinto(buffer):
        sizes.append(count)

    assert sum(sizes) == expected_total
    assert all(size == len(buffer) for size in sizes[:-1])
    assert expected_total % BLOCK_SIZE == 0


def test_long_and_unicode_names_round_trip(tmp_path: Path) -> None:
    model = tmp_path / "model"
    long_dir = model / ("d" * 120) / "ü-ñ"
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 150 + ".bin")).write_bytes(b"payload")
    out = tmp_path / "out"
    out.mkdir()

    unpack_chunks(chunks(pack_directory(model).read(), 1000), DirectoryWriter(out))

    assert read_tree(out) == read_tree(model)


def test_executable_bit_is_kept_and_other_mode_bits_normalised(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "run.sh").write_text("#!/bin/sh\n")
    (model / "run.sh").chmod(0o700)
    (model / "data").write_text("x")
    (model / "data").chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()

    unpack_chunks([pack_directory(model).read()], DirectoryWriter(out))

    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755 & ~_umask()
    assert (out / "data").stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_pack_refuses_symlinks(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    (model / "link").symlink_to(model / "config.json")
    with pytest.raises(UsageError, match="symbolic link"):
        collect_model_files(model)


def test_pack_refuses_special_files(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    os.mkfifo(model / "pipe")
    with pytest.raises(UsageError, match="not a regular file"):
        collect_model_files(model)


def test_pack_refuses_a_file_that_shrinks_while_packed(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    stream = pack_directory(model)
    (model / "weights.bin").write_bytes(b"short")
    with pytest.raises(UsageError, match="shrank while it was being packed"):
        stream.read()


def test_pack_refuses_a_path_that_is_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        collect_model_files(tmp_path / "missing")


# --- unpacking -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 511, 512, 513, 65_536, 10_000_000])
def test_unpack_round_trips_whatever_the_chunk_size(tmp_path: Path, chunk_size: int) -> None:
    model = make_model(tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()

    reader = unpack_chunks(chunks(pack_directory(model).read(), chunk_size), DirectoryWriter(out))

    assert read_tree(out) == read_tree(model)
    assert reader.file_count == 4
    assert reader.total_size == sum(len(data) for data in read_tree(model).values())


def test_unpack_accepts_archives_from_other_tools(tmp_path: Path) -> None:
    # `tar -C dir .` writes "./" names and directory entries; git archive adds a global header.
    directory = tarfile.TarInfo("./sub")
    directory.type = tarfile.DIRTYPE
    global_header = tarfile.TarInfo("pax_global_header")
    global_header.type = tarfile.XGLTYPE
    records = b"52 comment=0123456789abcdef0123456789abcdef01234567\n"
    global_header.size = len(records)
    archive = tar_bytes(
        (global_header, records),
        special("./", tarfile.DIRTYPE),
        (directory, None),
        regular("./sub/a.txt", b"hello"),
        fmt=tarfile.GNU_FORMAT,
    )
    out = tmp_path / "out"
    out.mkdir()

    unpack_chunks([archive], DirectoryWriter(out))

    assert read_tree(out) == {"sub/a.txt": b"hello"}


def test_unpack_honours_a_pax_path(tmp_path: Path) -> None:
    info, data = regular("short-name", b"content")
    info.pax_headers = {"path": "renamed/by-pax.bin"}
    out = tmp_path / "out"
    out.mkdir()

    unpack_chunks([tar_bytes((info, data))], DirectoryWriter(out))

    assert read_tree(out) == {"renamed/by-pax.bin": b"content"}


HOSTILE = [
    ("absolute path", [regular("/etc/evil", b"x")], "absolute path"),
    ("parent traversal", [regular("../evil", b"x")], "'..' component"),
    ("traversal inside", [regular("a/../../evil", b"x")], "'..' component"),
    ("symlink", [special("link", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link"),
    ("hard link", [regular("a", b"x"), special("b", tarfile.LNKTYPE, "a")], "hard link"),
    ("character device", [special("dev", tarfile.CHRTYPE)], "character device"),
    ("block device", [special("blk", tarfile.BLKTYPE)], "block device"),
    ("fifo", [special("fifo", tarfile.FIFOTYPE)], "FIFO"),
    ("duplicate", [regular("a", b"1"), regular("a", b"2")], "appears twice"),
    (
        "file then directory",
        [regular("a", b"1"), special("a", tarfile.DIRTYPE)],
        "both a file and a directory",
    ),
    ("file inside a file", [regular("a", b"1"), regular("a/b", b"2")], "which is a file"),
]


@pytest.mark.parametrize(
    ("members", "message"), [(m, msg) for _, m, msg in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_unpack_refuses_hostile_members_and_writes_nothing_outside(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], message: str | None
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    try:
        archive = tar_bytes(*members)
    except ValueError:
        pytest.fail("the standard library refused to build the hostile archive")

    with pytest.raises(IntegrityError, match=message or "not safe to unpack") as error:
        unpack_chunks(chunks(archive, 300), DirectoryWriter(out))

    assert "not safe to unpack" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not (tmp_path.parent / "evil").exists()
    assert all(path.is_file() or path.is_dir() for path in out.rglob("*"))
    assert not any(path.is_symlink() for path in out.rglob("*"))


def test_member_names_are_normalised_or_refused() -> None:
    assert safe_member_name("./a//b/./c") == "a/b/c"
    assert safe_member_name("./") == ""
    for hostile in ("a\x00b", "/abs", "a/../../b", ".."):
        with pytest.raises(IntegrityError, match="not safe to unpack"):
            safe_member_name(hostile)


def test_unpack_refuses_a_sparse_pax_member(tmp_path: Path) -> None:
    info, data = regular("sparse.bin", b"x")
    info.pax_headers = {"GNU.sparse.size": "1000000"}
    with pytest.raises(IntegrityError, match="sparse"):
        unpack_chunks([tar_bytes((info, data))], DirectoryWriter(tmp_path))


def test_unpack_refuses_a_global_header_that_renames(tmp_path: Path) -> None:
    global_header = tarfile.TarInfo("pax_global_header")
    global_header.type = tarfile.XGLTYPE
    records = b"17 path=evil.bin\n"
    global_header.size = len(records)
    with pytest.raises(IntegrityError, match="global PAX header"):
        unpack_chunks([tar_bytes((global_header, records), regular("a", b"x"))], DirectoryWriter(tmp_path))


def test_unpack_refuses_a_truncated_archive(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    data = pack_directory(model).read()
    for cut in (len(data) - 1024, 700, BLOCK_SIZE):  # before the end marker, inside a member, after a header
        out = tmp_path / f"out-{cut}"
        out.mkdir()
        with pytest.raises(IntegrityError, match="truncated"):
            unpack_chunks([data[:cut]], DirectoryWriter(out))


def test_unpack_refuses_data_after_the_end_marker(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    data = pack_directory(model).read() + b"smuggled" + bytes(504)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError, match="after the end-of-archive marker"):
        unpack_chunks([data], DirectoryWriter(out))


def test_unpack_refuses_a_corrupted_header(tmp_path: Path) -> None:
    data = bytearray(tar_bytes(regular("a.txt", b"x")))
    data[0] ^= 0xFF  # the name changes, the checksum no longer matches
    with pytest.raises(IntegrityError, match="bad tar header"):
        unpack_chunks([bytes(data)], DirectoryWriter(tmp_path))


def test_unpack_refuses_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    info, data = regular("placeholder", b"x")
    raw = bytearray(tar_bytes((info, data), fmt=tarfile.USTAR_FORMAT))
    raw[0:11] = b"caf\xe9.bin\x00\x00\x00"
    checksum = sum(raw[:148]) + 8 * 32 + sum(raw[156:512])
    raw[148:156] = b"%06o\x00 " % checksum
    with pytest.raises(IntegrityError, match="not valid UTF-8"):
        unpack_chunks([bytes(raw)], DirectoryWriter(tmp_path))


def test_unpack_enforces_the_caps(tmp_path: Path) -> None:
    archive = tar_bytes(regular("a", b"12345"), regular("b", b"12345"), regular("c", b"1"))
    cases = [
        (UnpackLimits(max_files=2), "more than 2 files"),
        (UnpackLimits(max_file_size=4), "larger than the 4-byte cap"),
        (UnpackLimits(max_total_size=9), "more than the 9-byte cap"),
        (UnpackLimits(max_name_length=0), "longer than 0 characters"),
    ]
    for index, (limits, message) in enumerate(cases):
        out = tmp_path / str(index)
        out.mkdir()
        sink = DirectoryWriter(out)
        with pytest.raises(IntegrityError, match=message):
            unpack_chunks([archive], sink, limits)
        sink.close()


def test_unpack_refuses_an_oversized_extended_header(tmp_path: Path) -> None:
    info, data = regular("a", b"x")
    info.pax_headers = {"comment": "c" * 5000}
    reader = TarStreamReader(DirectoryWriter(tmp_path), UnpackLimits(max_extended_header_size=1024))
    with pytest.raises(IntegrityError, match="extended header"):
        reader.feed(tar_bytes((info, data)))


def test_directory_writer_never_replaces_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("precious")
    with pytest.raises(StorageError, match="File exists"):
        unpack_chunks([tar_bytes(regular("a", b"new"))], DirectoryWriter(tmp_path))
    assert (tmp_path / "a").read_text() == "precious"
