"""Snapshot format: deterministic creation, ignore rules, git properties, and extraction that cannot escape."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runyard.errors import SnapshotInvalid, SnapshotTooDeep, SnapshotTooLarge, UsageError
from runyard.snapshot import MAX_DEPTH, Snapshot, create_snapshot, git_properties, safe_extract, validate_archive

MB = 1024 * 1024


def _write(root: Path, rel: str, data: bytes | str = b"x", mode: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        path.chmod(mode)
    return path


def _names(snap: Snapshot) -> list[str]:
    with zipfile.ZipFile(snap.path) as archive:
        return archive.namelist()


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (links not followed) with file contents; None for directories and links."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    _write(root, "train.py", "print('hi')\n")
    _write(root, "pkg/__init__.py", "")
    _write(root, "pkg/model.py", os.urandom(3 * MB))  # several chunks
    _write(root, "run.sh", "#!/bin/sh\necho ok\n", mode=0o755)
    return root


# --- create -------------------------------------------------------------------------------------------------


def test_same_contents_give_same_hash_even_after_touching_mtimes(project: Path, tmp_path: Path) -> None:
    first = create_snapshot(project, tmp_path)
    os.utime(project / "train.py", (1_000_000, 1_000_000))
    os.utime(project / "pkg", (2_000_000, 2_000_000))
    second = create_snapshot(project, tmp_path)
    assert first.path != second.path
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    _write(project, "train.py", "print('changed')\n")
    assert create_snapshot(project, tmp_path).sha256 != first.sha256


def test_snapshot_fields_describe_the_zip(project: Path, tmp_path: Path) -> None:
    snap = create_snapshot(project, tmp_path)
    assert snap.path.parent == tmp_path
    assert snap.size_bytes == snap.path.stat().st_size
    assert snap.file_count == 4
    assert snap.source_bytes == sum(p.stat().st_size for p in project.rglob("*") if p.is_file())
    assert _names(snap) == ["pkg/__init__.py", "pkg/model.py", "run.sh", "train.py"]
    with zipfile.ZipFile(snap.path) as archive:
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}


@pytest.mark.parametrize(
    ("present", "excluded"),
    [
        ((".runyardignore", ".amlignore", ".gitignore"), "a.txt"),
        ((".amlignore", ".gitignore"), "b.txt"),
        ((".gitignore",), "c.txt"),
    ],
)
def test_first_ignore_file_wins_and_others_are_not_read(tmp_path: Path, present: tuple[str, ...], excluded: str) -> None:
    root = tmp_path / "project"
    for name in ("a.txt", "b.txt", "c.txt"):
        _write(root, name)
    patterns = {".runyardignore": "a.txt\n", ".amlignore": "b.txt\n", ".gitignore": "c.txt\n"}
    for name in present:
        _write(root, name, patterns[name])
    names = _names(create_snapshot(root, tmp_path))
    assert sorted(n for n in names if n.endswith(".txt")) == sorted({"a.txt", "b.txt", "c.txt"} - {excluded})
    assert set(present) <= set(names)  # ignore files travel with the code


def test_ignore_file_that_ignores_itself_is_left_out(tmp_path: Path) -> None:
    root = tmp_path / "project"
    _write(root, "main.py")
    _write(root, ".runyardignore", ".runyardignore\n*.log\n!keep.log\n")
    _write(root, "noise.log")
    _write(root, "keep.log")
    assert _names(create_snapshot(root, tmp_path)) == ["keep.log", "main.py"]


def test_git_directory_is_always_excluded(tmp_path: Path) -> None:
    root = tmp_path / "project"
    _write(root, "main.py")
    _write(root, ".git/HEAD", "ref: refs/heads/main\n")
    _write(root, ".git/objects/ab/cdef", os.urandom(100))
    _write(root, "vendor/lib/.git", "gitdir: ../../.git/modules/lib\n")  # a submodule's link file
    _write(root, "vendor/lib/lib.py")
    assert _names(create_snapshot(root, tmp_path)) == ["main.py", "vendor/lib/lib.py"]


def test_ignored_directory_is_pruned_without_being_walked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "project"
    _write(root, "main.py")
    _write(root, ".runyardignore", "data/\n")
    big = _write(root, "data/deep/big.bin", b"")
    os.truncate(big, 2 * 1024**3)  # sparse: costs no disk, but counts if walked
    scanned: list[str] = []
    real_scandir = os.scandir

    def spy(path: Any) -> Any:
        scanned.append(Path(path).name)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    snap = create_snapshot(root, tmp_path)  # would be SnapshotTooLarge if data/ were counted
    assert _names(snap) == [".runyardignore", "main.py"]
    assert "data" not in scanned and "deep" not in scanned


def test_executable_bit_survives_create_and_extract(project: Path, tmp_path: Path) -> None:
    _write(project, "setuid.sh", "#!/bin/sh\n", mode=0o4750)
    snap = create_snapshot(project, tmp_path)
    dest = tmp_path / "run"
    safe_extract(snap.path, dest, max_entries=100, max_bytes=100 * MB)
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "train.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "setuid.sh").stat().st_mode) == 0o755  # setuid dropped, user-exec kept


def test_link_to_file_is_stored_as_content_and_link_to_directory_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "project"
    outside = _write(tmp_path, "shared/config.yaml", "lr: 0.1\n")
    _write(root, "main.py")
    (root / "config.yaml").symlink_to(outside)
    (root / "shared").symlink_to(outside.parent, target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    snap = create_snapshot(root, tmp_path)
    with zipfile.ZipFile(snap.path) as archive:
        assert archive.namelist() == ["config.yaml", "main.py"]
        assert archive.read("config.yaml") == b"lr: 0.1\n"
        assert all(stat.S_ISREG(i.external_attr >> 16) for i in archive.infolist())


def test_too_large_names_the_largest_files_and_writes_no_zip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "project"
    for i, size in enumerate([700, 100, 600, 200, 500, 300, 400]):
        _write(root, f"f{i}.bin", b"\0" * size)
    dest = tmp_path / "out"
    dest.mkdir()
    started: list[object] = []
    real_mkstemp = tempfile.mkstemp

    def spy(*args: Any, **kwargs: Any) -> tuple[int, str]:
        started.append(args)
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    with pytest.raises(SnapshotTooLarge) as caught:
        create_snapshot(root, dest, max_bytes=2000)
    err = caught.value
    assert (err.size_bytes, err.limit_bytes) == (2800, 2000)
    assert err.largest == [("f0.bin", 700), ("f2.bin", 600), ("f4.bin", 500), ("f6.bin", 400), ("f5.bin", 300)]
    assert "f0.bin" in str(err)
    assert started == []  # refused before compressing anything
    assert list(dest.iterdir()) == []


def test_exactly_at_the_limit_is_accepted(tmp_path: Path) -> None:
    root = tmp_path / "project"
    _write(root, "a.bin", b"\0" * 2000)
    assert create_snapshot(root, tmp_path, max_bytes=2000).source_bytes == 2000


def test_a_file_deeper_than_the_depth_limit_is_refused_naming_it_and_an_ignored_one_is_not(tmp_path: Path) -> None:
    root = tmp_path / "project"
    _write(root, "train.py", "print('hi')\n")
    deepest = "/".join(["d"] * (MAX_DEPTH - 1)) + "/ok.txt"     # exactly MAX_DEPTH components
    _write(root, deepest, "fine")
    snap = create_snapshot(root, tmp_path)
    assert deepest in _names(snap)
    dest = tmp_path / "run"
    safe_extract(snap.path, dest, max_entries=10, max_bytes=MB)
    assert (dest / deepest).read_text() == "fine"

    too_deep = "/".join(["d"] * MAX_DEPTH) + "/deep.txt"        # one component more
    _write(root, too_deep, "too far down")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SnapshotTooDeep) as caught:
        create_snapshot(root, out)
    assert (caught.value.entry, caught.value.depth, caught.value.limit) == (too_deep, MAX_DEPTH + 1, MAX_DEPTH)
    assert too_deep in str(caught.value) and ".runyardignore" in str(caught.value)
    assert list(out.iterdir()) == []

    _write(root, ".runyardignore", "deep.txt\n")
    assert deepest in _names(create_snapshot(root, out))


def test_a_path_longer_than_the_system_allows_is_a_usage_error(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(25):                                         # 25 x 200 bytes: past PATH_MAX (4096)
            os.mkdir("n" * 200, dir_fd=fd)
            child = os.open("n" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("data.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    with pytest.raises(UsageError, match="cannot read .*: File name too long; list it in .runyardignore"):
        create_snapshot(root, tmp_path)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_directory_that_is_not_a_directory_is_a_usage_error(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "code"
    if kind == "file":
        _write(tmp_path, "code")
    with pytest.raises(UsageError, match="code"):
        create_snapshot(target, tmp_path)
    assert list(tmp_path.glob("*.zip")) == []


# --- git ----------------------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=Runyard Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", "-C", str(repo), *identity, *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    return root


def test_git_properties_of_a_committed_repository(repo: Path) -> None:
    _git(repo, "remote", "add", "origin", "https://alice:s3cret@example.com/team/model.git")
    _write(repo, "train.py", "print(1)\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "first")
    props = git_properties(repo)
    assert props == {
        "git.repository_url": "https://example.com/team/model.git",  # credentials never become a property
        "git.branch": "main",
        "git.commit": _git(repo, "rev-parse", "HEAD"),
        "git.dirty": "false",
    }
    _write(repo, "train.py", "print(2)\n")
    assert git_properties(repo)["git.dirty"] == "true"


def test_git_properties_from_a_subdirectory_detached_and_without_remote(repo: Path) -> None:
    _write(repo, "src/train.py")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    commit = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", "--detach", commit)
    props = git_properties(repo / "src")
    assert props == {"git.branch": "HEAD", "git.commit": commit, "git.dirty": "false"}


def test_git_properties_are_empty_without_commits_outside_a_repo_or_without_git(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert git_properties(repo) == {}  # no commit yet
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_properties(outside) == {}
    assert git_properties(tmp_path / "missing") == {}
    _write(repo, "a.py")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    assert git_properties(repo) == {}


# --- validate and extract -----------------------------------------------------------------------------------


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names, which some tests need
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return path


def _entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


BAD_ENTRIES = {  # entry, its data, a word the reason must contain
    "parent": ("../evil", b"owned", ".."),
    "nested parent": ("a/../../x", b"owned", ".."),
    "absolute": ("/abs/path", b"owned", "absolute"),
    "backslash parent": ("..\\evil", b"owned", ".."),
    "drive": ("C:\\x", b"owned", "absolute"),
    "backslash absolute": ("\\abs\\path", b"owned", "absolute"),
    "symlink": (_entry("link", stat.S_IFLNK | 0o777), b"/etc/passwd", "link"),
    "device": (_entry("dev", stat.S_IFCHR | 0o666), b"", "regular file"),
    "fifo": (_entry("pipe", stat.S_IFIFO | 0o666), b"", "regular file"),
    "too deep": ("d/" * MAX_DEPTH + "evil", b"owned", f"over the limit of {MAX_DEPTH}"),
    "too deep directory": ("d/" * (MAX_DEPTH + 1), b"", f"over the limit of {MAX_DEPTH}"),
}


@pytest.mark.parametrize("bad", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_bad_entry_rejects_the_whole_archive_and_writes_nothing(
    tmp_path: Path, bad: tuple[str | zipfile.ZipInfo, bytes, str]
) -> None:
    work = tmp_path / "work"
    entry, data, why = bad
    archive = _zip(tmp_path / "bad.zip", [("good.py", b"ok"), ("sub/good.txt", b"ok"), (entry, data)])
    bad_name = entry.filename if isinstance(entry, zipfile.ZipInfo) else entry
    (work / "run").mkdir(parents=True)
    before = _tree(tmp_path)
    with pytest.raises(SnapshotInvalid) as caught:
        validate_archive(archive, max_entries=100, max_bytes=MB)
    assert caught.value.entry == bad_name
    assert why in caught.value.why
    for dest in (work / "run" / "new", work / "run"):  # missing dest, and existing empty dest
        with pytest.raises(SnapshotInvalid) as caught:
            safe_extract(archive, dest, max_entries=100, max_bytes=MB)
        assert caught.value.entry == bad_name
        assert _tree(tmp_path) == before
    assert not Path("/abs/path").exists()


def test_duplicate_and_conflicting_entries_are_rejected(tmp_path: Path) -> None:
    for i, entries in enumerate([[("a.txt", b"1"), ("a.txt", b"2")], [("a", b"1"), ("a/b", b"2")],
                                 [("a/b", b"1"), ("a", b"2")], [("a/", b""), ("a", b"1")]]):
        archive = _zip(tmp_path / f"dup{i}.zip", entries)
        with pytest.raises(SnapshotInvalid):
            validate_archive(archive, max_entries=100, max_bytes=MB)
        with pytest.raises(SnapshotInvalid):
            safe_extract(archive, tmp_path / f"dest{i}", max_entries=100, max_bytes=MB)
        assert not (tmp_path / f"dest{i}").exists()


def test_too_many_entries_is_rejected(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", [(f"f{i}.txt", b"x") for i in range(11)])
    with pytest.raises(SnapshotInvalid, match="11 entries"):
        validate_archive(archive, max_entries=10, max_bytes=MB)
    with pytest.raises(SnapshotInvalid):
        safe_extract(archive, tmp_path / "dest", max_entries=10, max_bytes=MB)
    assert not (tmp_path / "dest").exists()
    validate_archive(archive, max_entries=11, max_bytes=MB)


def test_not_a_zip_is_invalid(tmp_path: Path) -> None:
    garbage = _write(tmp_path, "snapshot.zip", os.urandom(4096))
    with pytest.raises(SnapshotInvalid) as caught:
        validate_archive(garbage, max_entries=10, max_bytes=MB)
    assert caught.value.entry == "<archive>"
    with pytest.raises(SnapshotInvalid):
        safe_extract(garbage, tmp_path / "dest", max_entries=10, max_bytes=MB)
    assert not (tmp_path / "dest").exists()


@pytest.fixture
def file_size_cap() -> Iterator[Callable[[int], None]]:
    """Make the kernel refuse any single file over `cap` bytes for the duration of a test (EFBIG, not a signal)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def apply(cap: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (cap, hard))

    yield apply
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def test_zip_bomb_is_rejected_without_writing_past_the_cap(
    tmp_path: Path, file_size_cap: Callable[[int], None]
) -> None:
    cap = 10 * MB
    bomb = _zip(tmp_path / "bomb.zip", [("ok.txt", b"fine"), ("zeros.bin", b"\0" * (50 * MB))])
    assert bomb.stat().st_size < MB
    with pytest.raises(SnapshotInvalid) as caught:
        validate_archive(bomb, max_entries=10, max_bytes=cap)
    assert caught.value.entry == "zeros.bin"
    file_size_cap(cap)  # writing one byte past the cap into a file now fails with EFBIG instead
    with pytest.raises(SnapshotInvalid) as caught:
        safe_extract(bomb, tmp_path / "dest", max_entries=10, max_bytes=cap)
    assert caught.value.entry == "zeros.bin"
    assert not (tmp_path / "dest").exists()
    existing = tmp_path / "run"
    existing.mkdir()
    with pytest.raises(SnapshotInvalid):
        safe_extract(bomb, existing, max_entries=10, max_bytes=cap)
    assert list(existing.iterdir()) == []  # "ok.txt" was written, then removed with the rest


def test_zip_bomb_with_lying_size_headers_is_rejected(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "liar.zip", [("zeros.bin", b"\0" * (50 * MB))])
    data = bytearray(bomb.read_bytes())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + 22 : local + 26] = (1000).to_bytes(4, "little")  # declared uncompressed size
    data[central + 24 : central + 28] = (1000).to_bytes(4, "little")
    bomb.write_bytes(bytes(data))
    with zipfile.ZipFile(bomb) as archive:
        assert archive.getinfo("zeros.bin").file_size == 1000
    with pytest.raises(SnapshotInvalid):
        validate_archive(bomb, max_entries=10, max_bytes=10 * MB)
    with pytest.raises(SnapshotInvalid):
        safe_extract(bomb, tmp_path / "dest", max_entries=10, max_bytes=10 * MB)
    assert not (tmp_path / "dest").exists()


def test_good_archive_extracts_byte_identically(project: Path, tmp_path: Path) -> None:
    _write(project, "empty.txt", b"")
    _write(project, "deep/er/still/data.bin", os.urandom(1000))
    snap = create_snapshot(project, tmp_path)
    validate_archive(snap.path, max_entries=100, max_bytes=snap.source_bytes)
    dest = tmp_path / "run"
    dest.mkdir()
    written = safe_extract(snap.path, dest, max_entries=100, max_bytes=snap.source_bytes)
    assert written == snap.source_bytes
    assert _tree(dest) == _tree(project)


def test_an_archive_entry_at_the_depth_limit_is_accepted(tmp_path: Path) -> None:
    name = "d/" * (MAX_DEPTH - 1) + "ok.txt"
    archive = _zip(tmp_path / "deep.zip", [(name, b"ok")])
    validate_archive(archive, max_entries=10, max_bytes=MB)
    assert safe_extract(archive, tmp_path / "dest", max_entries=10, max_bytes=MB) == 2
    assert (tmp_path / "dest" / name).read_bytes() == b"ok"


def test_extract_accepts_explicit_directory_entries(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "dirs.zip", [("./", b""), ("a/", b""), ("a/b/", b""), ("a/b/c.txt", b"c")])
    dest = tmp_path / "dest"
    assert safe_extract(archive, dest, max_entries=10, max_bytes=MB) == 1
    assert _tree(dest) == {"a": None, "a/b": None, "a/b/c.txt": b"c"}


def test_extract_refuses_a_non_empty_destination_and_leaves_it_alone(project: Path, tmp_path: Path) -> None:
    snap = create_snapshot(project, tmp_path)
    dest = tmp_path / "run"
    _write(dest, "mine.txt", "keep")
    with pytest.raises(FileExistsError):
        safe_extract(snap.path, dest, max_entries=100, max_bytes=100 * MB)
    assert _tree(dest) == {"mine.txt": b"keep"}
