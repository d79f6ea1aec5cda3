"""Zipping a run's ./outputs for upload: regular files only, links never followed, no recursion.

The agent is root and the run owns the directory, so the run decides what is in it, right up to the moment it
is read: a link to the node credential, a directory swapped for a link between the listing and the reading, a
FIFO where a file was, a hard link to someone else's file. So every step goes through a directory descriptor:
each directory is opened relative to its parent with `O_NOFOLLOW`, each file relative to its directory with
`O_NOFOLLOW | O_NONBLOCK` and is taken only if `fstat` says it is a regular file (and, when `owner` is given, one
that uid owns: a file a run can read anyway). At most the size seen at the listing is read from a file.
The walk is an explicit stack, so no directory depth can exhaust Python's stack; entries deeper than
`MAX_DEPTH` directories are left out and counted (their paths would pass PATH_MAX long before anything useful).
The MLflow artifacts a run uploaded through the agent (`tracking.py`) join the archive from the agent's staging
directory, walked the same way. Blocking: call it through `asyncio.to_thread`. Must not: follow a symbolic link,
or read outside `directory` and the staging directories it is given.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from runyard.descriptors import DIR_FLAGS, open_below
from agent.digest import file_sha256

log = logging.getLogger(__name__)

MAX_DEPTH = 64
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Zipped:
    sha256: str        # '' when nothing was zipped (no files, or over the size limit)
    files: int
    too_deep: int      # entries left out for being deeper than MAX_DEPTH
    over_limit: bool   # the files add up to more than the limit; nothing is uploaded


def zip_outputs(directory: Path, archive: Path, *, max_bytes: int, owner: int | None = None,
                extra: Sequence[tuple[Path, str]] = ()) -> Zipped:
    """Zip the regular files below `directory` into `archive` (created 0600); nothing to upload when there are none.

    `directory` itself may be a link or missing (nothing to zip); its parent must be the agent's. With `owner`,
    only files owned by that uid are taken. `extra`: the agent's own directories (the MLflow artifacts a run
    uploaded) whose files go into the archive under a prefix, counted against `max_bytes` too; a name the run's
    outputs already have is left out of them.
    """
    with ExitStack() as stack:
        sources: list[tuple[int, str, int | None, list[tuple[str, int]]]] = []
        too_deep = 0
        for path, prefix, who in [(directory, "", owner), *((path, prefix, None) for path, prefix in extra)]:
            top = stack.enter_context(_open_top(path))
            if top is None:
                continue
            files, deep = _regular_files(top)
            too_deep += deep
            sources.append((top, prefix, who, files))
        count = sum(len(files) for *_, files in sources)
        if sum(size for *_, files in sources for _, size in files) > max_bytes:
            log.warning("outputs over the size limit; not uploaded",
                        extra={"dir": str(directory), "max_bytes": max_bytes})
            return Zipped("", count, too_deep, True)
        if not count:
            return Zipped("", 0, too_deep, False)
        fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        taken = 0
        names: set[str] = set()
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for top, prefix, who, files in sources:
                for rel, size in files:
                    if prefix + rel in names:
                        log.warning("artifact has the name of an output; left out", extra={"path": prefix + rel})
                        continue
                    names.add(prefix + rel)
                    taken += _add_file(zf, top, rel, size, who, name=prefix + rel)
    if not taken:
        archive.unlink(missing_ok=True)
        return Zipped("", 0, too_deep, False)
    return Zipped(file_sha256(archive), taken, too_deep, False)


@contextmanager
def _open_top(directory: Path) -> Iterator[int | None]:
    parent = os.open(directory.parent, DIR_FLAGS)
    try:
        try:
            fd: int | None = os.open(directory.name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            fd = None
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            log.warning("outputs is not a directory (a link?); nothing is uploaded", extra={"dir": str(directory)})
            fd = None
    finally:
        os.close(parent)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _open_below(top: int, rel_dir: str) -> int:
    """A descriptor of `rel_dir` below `top`, every step refusing a link (OSError when one is found)."""
    return open_below(top, rel_dir.split("/") if rel_dir else ())


def _regular_files(top: int) -> tuple[list[tuple[str, int]], int]:
    """(relative path, size) of every regular file below `top`, in path order; and how many were too deep."""
    found: list[tuple[str, int]] = []
    too_deep = 0
    stack: list[tuple[str, int]] = [("", 0)]  # (relative dir, depth)
    while stack:
        rel_dir, depth = stack.pop()
        try:
            fd = _open_below(top, rel_dir)
        except OSError as err:  # swapped for a link or removed since it was listed: left out
            log.warning("outputs directory changed while listed; left out", extra={"path": rel_dir, "error": str(err)})
            continue
        try:
            with os.scandir(fd) as entries:
                listed = sorted(((e.name, e.stat(follow_symlinks=False)) for e in entries), reverse=True)
        finally:
            os.close(fd)
        for name, st in listed:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if stat.S_ISDIR(st.st_mode):
                if depth + 1 > MAX_DEPTH:
                    too_deep += 1
                else:
                    stack.append((rel, depth + 1))
            elif stat.S_ISREG(st.st_mode):
                found.append((rel, st.st_size))
    found.sort()
    return found, too_deep


def _add_file(zf: zipfile.ZipFile, top: int, rel: str, size: int, owner: int | None, *, name: str) -> int:
    """Add one listed file as `name` if it is still a regular file (of `owner`); 1 if it was added, else 0."""
    rel_dir, _, base = rel.rpartition("/")
    try:
        parent = _open_below(top, rel_dir)
        try:
            fd = os.open(base, _FILE_FLAGS, dir_fd=parent)
        finally:
            os.close(parent)
    except OSError as err:
        log.warning("outputs file changed while zipped; left out", extra={"path": rel, "error": str(err)})
        return 0
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode) or (owner is not None and st.st_uid != owner):
            log.warning("outputs entry is not the run's own regular file; left out", extra={"path": rel})
            return 0
        info = zipfile.ZipInfo(name, date_time=time.localtime(max(st.st_mtime, 315532800))[:6])
        info.external_attr = (stat.S_IFREG | stat.S_IMODE(st.st_mode)) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w") as dst:
            left = size
            while left > 0 and (chunk := src.read(min(_CHUNK_BYTES, left))):
                dst.write(chunk)
                left -= len(chunk)
    return 1
