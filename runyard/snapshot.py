"""The snapshot format: a deterministic zip of the submitted directory, and the only code that opens one.

The client builds snapshots (`create_snapshot`, or `scan_directory` then `write_snapshot`; `git_properties`) and
remembers the hash of each directory it zipped (`SnapshotCache`): an unchanged directory (every file's path, size,
mtime, ctime, inode and mode as before) is not zipped again. The head checks every upload
(`validate_archive`) and the agent unpacks one into a run directory (`safe_extract`). The same directory gives
the same bytes, so the head can deduplicate by sha256.

Both check the archive's layout before `zipfile` parses it: the entry count and the central directory's place
from the end record, then that no two entries share bytes. So an archive of a million entries costs a few reads,
and a zip bomb built of overlapping entries is refused before anything is decompressed.

Must not: follow or create links, write anything outside the destination, trust the sizes an archive declares,
or read a whole file into memory. Functions here block; async callers wrap them in `asyncio.to_thread` (the head
runs `validate_archive` in a process of its own: `scheduler/snapshot_check.py`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from runyard.descriptors import open_below
from runyard.errors import SnapshotInvalid, SnapshotTooDeep, SnapshotTooLarge, UsageError
from runyard.private import write_private

if TYPE_CHECKING:
    import pathspec

IGNORE_FILES = (".runyardignore", ".amlignore", ".gitignore")
# Path components per entry: deeper trees are refused when built and when checked, so that extraction (one
# directory fd per component) and the run's working paths stay bounded.
MAX_DEPTH = 64
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK_BYTES = 1 << 20
_GIT_TIMEOUT_S = 5.0
_ARCHIVE = SnapshotInvalid.WHOLE
_DRIVE = re.compile(r"^[A-Za-z]:")
_ALLOWED_TYPES = (0, stat.S_IFREG, stat.S_IFDIR)
_ALLOWED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError)
# The zip records read before zipfile parses anything (APPNOTE 4.3): end of central directory, its zip64 locator
# and zip64 record, a central directory file header, a local file header.
_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_COMMENT_REACH = 1 << 16  # how far before the end record zipfile looks for it (an archive comment's length)
# What one central directory record of a snapshot may take. Names are relative paths of a directory that was
# walked, so shorter than PATH_MAX; Runyard writes no comments and extra fields only for zip64 sizes.
_MAX_NAME_BYTES = 4096
_MAX_EXTRA_BYTES = 256
_MAX_RECORD_BYTES = _CENTRAL.size + _MAX_NAME_BYTES + _MAX_EXTRA_BYTES
_FOREIGN = "not a snapshot Runyard wrote"
_FORMAT = "runyard-snapshot-1"  # in every listing's digest: a change to what `_write_zip` writes must change it


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path  # a zip file in a temp location the caller owns and deletes
    sha256: str  # hex digest of the zip bytes
    size_bytes: int  # size of the zip file
    file_count: int
    source_bytes: int  # sum of the uncompressed file sizes included


@dataclass(frozen=True, slots=True)
class _Member:
    name: str  # POSIX path relative to the snapshot root
    source: Path  # where to read the bytes from (a link to a file reads its target)
    size_bytes: int
    mode: int  # permission bits only
    stats: tuple[int, ...] = ()  # (size, mtime_ns, ctime_ns, inode, device, st_mode) of the file read: see `Listing`


@dataclass(frozen=True, slots=True)
class Listing:
    """What a snapshot of `directory` holds, found by walking it without reading a file: the members and, in
    `stats_digest`, a digest of each member's path and stat (size, mtime_ns, ctime_ns, inode, device, mode) and of
    the ignore file. Equal digests mean an unchanged directory: writing to a file changes its ctime even when its
    size and mtime are put back."""
    directory: Path
    members: tuple[_Member, ...]
    total_bytes: int
    largest: list[tuple[str, int]]
    stats_digest: str
    newest_change_ns: int  # the latest mtime or ctime of a member: see `SnapshotCache`


# --- create -------------------------------------------------------------------------------------------------


def create_snapshot(directory: Path, dest_dir: Path, *, max_bytes: int = 300_000_000) -> Snapshot:
    """Zip `directory` into a new file in `dest_dir`; raise `SnapshotTooLarge` before writing if over `max_bytes`,
    `SnapshotTooDeep` if a file lies more than `MAX_DEPTH` path components down."""
    return write_snapshot(scan_directory(directory, max_bytes=max_bytes), dest_dir, max_bytes=max_bytes)


def scan_directory(directory: Path, *, max_bytes: int = 300_000_000) -> Listing:
    """Walk `directory` as `create_snapshot` does and stat every file it would take, reading none; raise
    `SnapshotTooLarge` if they hold more than `max_bytes`, `SnapshotTooDeep` for a path too deep."""
    directory = Path(directory)
    if not directory.exists():
        raise UsageError(f"{directory} does not exist; pass the directory holding your code")
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory; pass the directory holding your code")
    spec, ignore_text = _ignore_file(directory)
    members = _collect(directory, spec)
    total = sum(m.size_bytes for m in members)
    largest = [(m.name, m.size_bytes) for m in sorted(members, key=lambda m: (-m.size_bytes, m.name))[:5]]
    if total > max_bytes:
        raise SnapshotTooLarge(str(directory), total, max_bytes, largest)
    digest = hashlib.sha256(f"{_FORMAT}\0{zlib.ZLIB_RUNTIME_VERSION}\0".encode())
    digest.update(hashlib.sha256(ignore_text.encode("utf-8", "surrogateescape")).digest())
    for member in members:
        digest.update(f"{member.name}\0{member.stats}\n".encode("utf-8", "surrogateescape"))
    newest = max((max(m.stats[1], m.stats[2]) for m in members), default=0)
    return Listing(directory, tuple(members), total, largest, digest.hexdigest(), newest)


def write_snapshot(listing: Listing, dest_dir: Path, *, max_bytes: int = 300_000_000) -> Snapshot:
    """Zip the members of `listing` into a new file in `dest_dir`."""
    directory, members, largest = listing.directory, list(listing.members), listing.largest
    fd, name = tempfile.mkstemp(prefix="snapshot-", suffix=".zip", dir=dest_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "w+b") as raw:
            written = _write_zip(raw, members)
        if written > max_bytes:  # a file grew while we were reading it
            raise SnapshotTooLarge(str(directory), written, max_bytes, largest)
        with path.open("rb") as zipped:
            digest = hashlib.file_digest(zipped, "sha256").hexdigest()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Snapshot(path, digest, path.stat().st_size, len(members), written)


def _ignore_file(directory: Path) -> tuple[pathspec.GitIgnoreSpec | None, str]:
    """The first ignore file that exists at the root wins; the others are not read (Azure ML's rule). Returns its
    spec and which file it is with its text (what the listing's digest takes of it)."""
    for name in IGNORE_FILES:
        candidate = directory / name
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8", errors="replace")
            import pathspec     # only for a directory with an ignore file

            return pathspec.GitIgnoreSpec.from_lines(text.splitlines()), f"{name}\0{text}"
    return None, ""


def _collect(root: Path, spec: pathspec.GitIgnoreSpec | None) -> list[_Member]:
    """Walk `root`, pruning ignored directories without entering them; return members sorted by name."""
    members: list[_Member] = []
    pending = [""]
    while pending:
        prefix = pending.pop()
        for entry in _scan(root / prefix):
            rel = prefix + entry.name
            if entry.name == ".git":
                continue
            if entry.is_dir(follow_symlinks=False):
                if spec is None or not spec.match_file(rel + "/"):
                    pending.append(rel + "/")
            elif spec is None or not spec.match_file(rel):
                member = _member(entry, rel)
                if member is not None:
                    if rel.count("/") + 1 > MAX_DEPTH:
                        raise SnapshotTooDeep(str(root), rel, rel.count("/") + 1, MAX_DEPTH)
                    members.append(member)
    members.sort(key=lambda m: m.name)
    return members


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except PermissionError as exc:
        raise UsageError(f"cannot read {directory}: permission denied; list it in .runyardignore") from exc
    except OSError as exc:  # e.g. a path longer than the system allows, or a directory removed while we walk
        raise UsageError(f"cannot read {directory}: {exc.strerror}; list it in .runyardignore") from exc


def _member(entry: os.DirEntry[str], rel: str) -> _Member | None:
    """A regular file, or a link to one (stored as its content); links to directories and special files are skipped."""
    try:
        info = entry.stat(follow_symlinks=True)
    except FileNotFoundError:  # a dangling link, or a file deleted while we walk
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"file name {rel!r} is not valid UTF-8; rename it or list it in .runyardignore") from exc
    # Only "executable or not" is kept, so that the same code hashes the same whatever the submitter's umask.
    mode = 0o755 if info.st_mode & stat.S_IXUSR else 0o644
    stats = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev, info.st_mode)
    return _Member(rel, Path(entry.path), info.st_size, mode, stats)


def _write_zip(raw: BinaryIO, members: list[_Member]) -> int:
    """Write members with fixed metadata so equal contents give equal bytes; return the source bytes read."""
    written = 0
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member in members:
            info = zipfile.ZipInfo(member.name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever the building machine
            info.external_attr = (stat.S_IFREG | member.mode) << 16
            info.file_size = member.size_bytes  # lets zipfile pick zip64 for big files
            try:
                with member.source.open("rb") as src, archive.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK_BYTES)
            except PermissionError as exc:
                raise UsageError(f"cannot read {member.source}: permission denied; list it in .runyardignore") from exc
            written += info.file_size
    return written


# --- the hashes of directories zipped before ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedSnapshot:
    sha256: str
    size_bytes: int
    file_count: int


class SnapshotCache:
    """The snapshot hash of each directory zipped lately, by the digest of its listing (`Listing.stats_digest`),
    in one small JSON file of the user's (`$XDG_CACHE_HOME/runyard/snapshots.json`, else `~/.cache/runyard/`).

    A listing any of whose files changed within `racy_ns` (2 s) of being listed is not remembered: a file written again
    within the file system's timestamp granularity could keep its mtime and ctime (git's "racily clean" entries).
    A cache that cannot be read or written is as good as empty: it only saves work.
    """

    RACY_NS = 2_000_000_000
    MAX_DIRECTORIES = 64

    def __init__(self, path: Path | None = None, *, racy_ns: int = RACY_NS) -> None:
        self.path = path or default_cache_dir() / "snapshots.json"
        self.racy_ns = racy_ns

    def get(self, listing: Listing) -> CachedSnapshot | None:
        entry = self._load().get(str(listing.directory.resolve()))
        if not isinstance(entry, dict) or entry.get("stats") != listing.stats_digest:
            return None
        try:
            return CachedSnapshot(str(entry["sha256"]), int(entry["size_bytes"]), int(entry["file_count"]))
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, listing: Listing, snapshot: Snapshot) -> None:
        if time.time_ns() - listing.newest_change_ns < self.racy_ns:
            return
        entries = self._load()
        key = str(listing.directory.resolve())
        entries.pop(key, None)
        entries[key] = {"stats": listing.stats_digest, "sha256": snapshot.sha256, "size_bytes": snapshot.size_bytes,
                        "file_count": snapshot.file_count}
        kept = dict(list(entries.items())[-self.MAX_DIRECTORIES:])   # the most recently zipped
        try:
            write_private(self.path, json.dumps(kept, separators=(",", ":")).encode())
        except OSError:
            pass

    def _load(self) -> dict[str, object]:
        try:
            found = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runyard"


# --- git ----------------------------------------------------------------------------------------------------


def git_properties(directory: Path) -> dict[str, str]:
    """Repository URL, branch, commit and dirty flag of the work tree holding `directory`; `{}` when there is none.

    One `git status --porcelain=v2 --branch` gives the commit, the branch and whether the tree is dirty, and fails
    outside a work tree; a second call reads the remote's URL."""
    status = _git(directory, "status", "--porcelain=v2", "--branch")
    if status is None:
        return {}
    heads = dict(line[2:].partition(" ")[::2] for line in status.splitlines() if line.startswith("# "))
    commit = heads.get("branch.oid", "")
    if not re.fullmatch(r"[0-9a-f]{40,64}", commit):
        return {}   # "(initial)": no commit yet
    branch = heads.get("branch.head", "")
    props = {
        "git.repository_url": _without_credentials(_git(directory, "config", "--get", "remote.origin.url") or ""),
        "git.branch": "HEAD" if branch in ("", "(detached)") else branch,
        "git.commit": commit,
        "git.dirty": "true" if any(not line.startswith("# ") for line in status.splitlines()) else "false",
    }
    return {key: value for key, value in props.items() if value}


def _git(directory: Path, *args: str) -> str | None:
    """Stripped stdout of one git command, or None if git is missing, fails or times out."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    env |= {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True, encoding="utf-8", errors="replace", env=env,
            stdin=subprocess.DEVNULL, timeout=_GIT_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _without_credentials(url: str) -> str:
    """`https://user:token@host/x` -> `https://host/x`: a token in a remote URL must not become a run property."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# --- validate and extract -----------------------------------------------------------------------------------


def validate_archive(path: Path, *, max_entries: int, max_bytes: int) -> None:
    """Raise `SnapshotInvalid` unless every entry is safe to extract; writes nothing, decompresses everything."""
    with _open_archive(path, max_entries) as archive:
        total = 0
        for info, _ in _checked_entries(archive):
            for chunk in _read_entry(archive, info):
                total += len(chunk)
                if total > max_bytes:
                    raise SnapshotInvalid(info.filename, f"archive unpacks to more than {max_bytes} bytes")


def safe_extract(path: Path, dest: Path, *, max_entries: int, max_bytes: int) -> int:
    """Extract into `dest` (missing or empty) after checking every entry; return bytes written.

    On any failure everything written is removed and `dest` is left as it was found.
    """
    dest = Path(dest)
    with _open_archive(path, max_entries) as archive:
        entries = _checked_entries(archive)
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise FileExistsError(f"extraction target {dest} is not empty")
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            return _extract_all(archive, entries, root_fd, max_bytes)
        except BaseException:
            _remove_contents(dest, remove_root=created)
            raise
        finally:
            os.close(root_fd)


@contextmanager
def _open_archive(path: Path, max_entries: int) -> Iterator[zipfile.ZipFile]:
    """The archive, handed to zipfile only once its end record and central directory are checked, and yielded
    once its entries are known not to overlap. zipfile reads through the same file object as the checks."""
    with open(path, "rb") as raw:
        directory = _central_directory(raw, max_entries)
        try:
            archive = zipfile.ZipFile(raw)
        except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
            raise SnapshotInvalid(_ARCHIVE, "not a zip archive") from exc
        with archive:
            _refuse_overlaps(raw, archive.infolist(), directory)
            yield archive


# --- the archive's layout, read before zipfile parses it ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Directory:
    offset: int  # where the central directory starts; the entries' bytes all lie before it
    size_bytes: int
    entries: int


def _central_directory(raw: BinaryIO, max_entries: int) -> _Directory:
    """Where the central directory is and how many entries it holds, from the end record (zip64's when present).

    Refused: more entries than `max_entries`; a directory that does not end where the end records begin (so
    nothing precedes or follows the archive, and zipfile shifts no offset); a directory size that so many entries
    cannot take; a directory whose records are not exactly as many as the end record says. zipfile itself never
    reads the count: it parses records until the directory's bytes run out, one object per record.
    """
    file_size = raw.seek(0, os.SEEK_END)
    end_at = _end_record_at(raw, file_size)
    raw.seek(end_at)
    _, _, _, _, entries, size, offset, _ = _END.unpack(raw.read(_END.size))
    directory_end = end_at
    record_at = end_at - _END64_LOCATOR.size - _END64.size
    if end_at >= _END64_LOCATOR.size:
        raw.seek(end_at - _END64_LOCATOR.size)
        if raw.read(4) == b"PK\x06\x07":  # zip64 locator: zipfile then takes the zip64 record's figures
            if record_at < 0:
                raise SnapshotInvalid(_ARCHIVE, "not a zip archive (a zip64 locator but no zip64 end record)")
            raw.seek(record_at)
            record = _END64.unpack(raw.read(_END64.size))
            if record[0] != b"PK\x06\x06":
                raise SnapshotInvalid(_ARCHIVE, "not a zip archive (a zip64 locator but no zip64 end record)")
            entries, size, offset, directory_end = record[7], record[8], record[9], record_at
    if entries > max_entries:
        raise SnapshotInvalid(_ARCHIVE, f"it has {entries:,} entries; the limit is {max_entries:,}")
    if offset + size != directory_end:
        raise SnapshotInvalid(_ARCHIVE, f"its end record places the central directory ({size:,} bytes at byte "
                                        f"{offset:,}) where it is not in this {file_size:,}-byte file: {_FOREIGN}")
    if not entries * _CENTRAL.size <= size <= entries * _MAX_RECORD_BYTES:
        raise SnapshotInvalid(_ARCHIVE, f"its end record gives an entry count of {entries:,} for a central "
                                        f"directory of {size:,} bytes: {_FOREIGN}")
    directory = _Directory(offset, size, entries)
    _count_records(raw, directory)
    return directory


def _end_record_at(raw: BinaryIO, file_size: int) -> int:
    """The end of central directory record's offset, found the way zipfile finds it: at the very end of the file,
    else the last signature within the longest comment's reach."""
    if file_size < _END.size:
        raise SnapshotInvalid(_ARCHIVE, "not a zip archive")
    raw.seek(file_size - _END.size)
    tail = raw.read(_END.size)
    if tail[:4] == b"PK\x05\x06" and tail[-2:] == b"\0\0":
        return file_size - _END.size
    start = max(file_size - _COMMENT_REACH - _END.size, 0)
    raw.seek(start)
    data = raw.read()
    found = data.rfind(b"PK\x05\x06")
    if found < 0 or len(data) - found < _END.size:
        raise SnapshotInvalid(_ARCHIVE, "not a zip archive")
    return start + found


def _count_records(raw: BinaryIO, directory: _Directory) -> None:
    """Walk the central directory's record headers as zipfile will, without keeping any: their number must be the
    end record's, each within what a snapshot's record takes, and the last must end where the directory does."""
    raw.seek(directory.offset)
    walked = count = 0
    while walked < directory.size_bytes:
        head = raw.read(_CENTRAL.size)
        if len(head) != _CENTRAL.size or head[:4] != b"PK\x01\x02":
            raise SnapshotInvalid(_ARCHIVE, "not a zip archive (a corrupt central directory)")
        count += 1
        if count > directory.entries:
            raise SnapshotInvalid(_ARCHIVE, f"its central directory holds more than the {directory.entries:,} "
                                            f"entries its end record says: {_FOREIGN}")
        name_bytes, extra_bytes, comment_bytes = _CENTRAL.unpack(head)[12:15]
        if name_bytes > _MAX_NAME_BYTES or extra_bytes + comment_bytes > _MAX_EXTRA_BYTES:
            raise SnapshotInvalid(_ARCHIVE, f"entry {count:,} has a name of {name_bytes:,} bytes and "
                                            f"{extra_bytes + comment_bytes:,} bytes of extra fields and comment; "
                                            f"the limits are {_MAX_NAME_BYTES:,} and {_MAX_EXTRA_BYTES}")
        raw.seek(name_bytes + extra_bytes + comment_bytes, os.SEEK_CUR)
        walked += _CENTRAL.size + name_bytes + extra_bytes + comment_bytes
    if walked != directory.size_bytes or count != directory.entries:
        raise SnapshotInvalid(_ARCHIVE, f"its central directory holds {count:,} entries in {walked:,} bytes, not "
                                        f"the {directory.entries:,} in {directory.size_bytes:,} its end record "
                                        f"says: {_FOREIGN}")


def _refuse_overlaps(raw: BinaryIO, infos: list[zipfile.ZipInfo], directory: _Directory) -> None:
    """Refuse an entry whose bytes (local header, name, extra field, compressed data, as zipfile will read them)
    reach into the next entry's or into the central directory.

    Why: a cap on the upload's size bounds what an archive unpacks to only if every compressed byte is read once.
    A zip bomb of overlapping entries ("better zip bomb") points thousands of entries at one deflated kernel, so
    its unpacked size grows with the square of its size. No zip writer makes entries overlap.
    """
    if len(infos) != directory.entries:
        raise SnapshotInvalid(_ARCHIVE, f"zipfile read {len(infos):,} entries where the end record says "
                                        f"{directory.entries:,}: {_FOREIGN}")
    previous: zipfile.ZipInfo | None = None
    free_from = 0  # the first byte no earlier entry uses
    for info in sorted(infos, key=lambda i: i.header_offset):
        if previous is not None and info.header_offset < free_from:
            raise SnapshotInvalid(info.filename, f"it overlaps entry {previous.filename!r}: {_FOREIGN}")
        raw.seek(info.header_offset)
        head = raw.read(_LOCAL.size)
        if len(head) != _LOCAL.size or head[:4] != b"PK\x03\x04":
            raise SnapshotInvalid(info.filename, "corrupt entry: no local header where the central directory says")
        name_bytes, extra_bytes = _LOCAL.unpack(head)[10:12]
        free_from = info.header_offset + _LOCAL.size + name_bytes + extra_bytes + info.compress_size
        if free_from > directory.offset:
            raise SnapshotInvalid(info.filename, f"its data runs into the central directory: {_FOREIGN}")
        previous = info


# --- entries ------------------------------------------------------------------------------------------------------


def _checked_entries(archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Every entry with its path components, or `SnapshotInvalid` for the first entry that must not be written."""
    entries: list[tuple[zipfile.ZipInfo, list[str]]] = []
    files: set[str] = set()
    dirs: set[str] = set()
    for info in archive.infolist():
        parts = _entry_parts(info)
        if not parts:
            continue  # "./" or "/" alone: the root itself
        name = "/".join(parts)
        if name in files or (not info.is_dir() and name in dirs):
            raise SnapshotInvalid(info.filename, "duplicate or conflicting entry")
        parents = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if parents & files:
            raise SnapshotInvalid(info.filename, "a parent directory is also a file entry")
        (dirs if info.is_dir() else files).add(name)
        dirs |= parents
        entries.append((info, parts))
    return entries


def _entry_parts(info: zipfile.ZipInfo) -> list[str]:
    name = info.filename
    if not name or "\0" in name:
        raise SnapshotInvalid(name, "empty name or NUL byte in name")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise SnapshotInvalid(name, "absolute path")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SnapshotInvalid(name, "path leaves the snapshot directory ('..')")
    if len(parts) > MAX_DEPTH:
        raise SnapshotInvalid(name, f"path is {len(parts)} components deep, over the limit of {MAX_DEPTH}")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise SnapshotInvalid(name, "path component longer than 255 bytes")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise SnapshotInvalid(name, "symbolic link entry")
    if kind not in _ALLOWED_TYPES:
        raise SnapshotInvalid(name, "not a regular file or directory")
    if info.flag_bits & 0x1:
        raise SnapshotInvalid(name, "encrypted entry")
    if info.compress_type not in _ALLOWED_COMPRESSION:
        raise SnapshotInvalid(name, f"unsupported compression method {info.compress_type}")
    if not parts and not info.is_dir():
        raise SnapshotInvalid(name, "empty file name")
    return parts


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """Decompressed chunks of one entry, as produced (never sized from the header); corrupt data is invalid."""
    try:
        with archive.open(info) as src:
            while chunk := src.read(_CHUNK_BYTES):
                yield chunk
    except _CORRUPT as exc:
        raise SnapshotInvalid(info.filename, f"corrupt entry: {exc}") from exc


def _extract_all(archive: zipfile.ZipFile, entries: list[tuple[zipfile.ZipInfo, list[str]]], root_fd: int,
                 max_bytes: int) -> int:
    total = 0
    for info, parts in entries:
        dir_parts = parts if info.is_dir() else parts[:-1]
        parent_fd = _open_dirs(root_fd, dir_parts, info.filename)
        try:
            if not info.is_dir():
                total = _extract_file(archive, info, parts[-1], parent_fd, total, max_bytes)
        finally:
            os.close(parent_fd)
    return total


def _open_dirs(root_fd: int, parts: list[str], entry: str) -> int:
    """Create and open each directory below `root_fd` relative to a directory fd, refusing links at every step."""
    try:
        return open_below(root_fd, parts, create=True, mode=0o755)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        raise SnapshotInvalid(entry, f"{exc.filename!r} is not a directory") from exc


def _extract_file(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, parent_fd: int, total: int,
                  max_bytes: int) -> int:
    """Stream one entry into a new file; stop before the running total would pass `max_bytes`."""
    mode = 0o755 if (info.external_attr >> 16) & stat.S_IXUSR else 0o644
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent_fd)
    except FileExistsError as exc:  # e.g. "A" and "a" on a case-insensitive file system
        raise SnapshotInvalid(info.filename, "collides with another entry") from exc
    with os.fdopen(fd, "wb") as out:
        for chunk in _read_entry(archive, info):
            if total + len(chunk) > max_bytes:
                raise SnapshotInvalid(info.filename, f"archive unpacks to more than {max_bytes} bytes")
            out.write(chunk)
            total += len(chunk)
        os.fchmod(out.fileno(), mode)
    return total


def _remove_contents(dest: Path, *, remove_root: bool) -> None:
    if remove_root:
        shutil.rmtree(dest)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
