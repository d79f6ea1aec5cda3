"""Zipping a run's ./outputs for upload: regular files only, links never followed, no recursion.

The walk is an explicit stack, so no directory depth can exhaust Python's stack; entries deeper than
`MAX_DEPTH` directories are left out and counted (their paths would pass PATH_MAX long before anything useful).
Blocking: call it through `asyncio.to_thread`. Must not: follow a symbolic link, or read outside `directory`.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from agent.digest import file_sha256

log = logging.getLogger(__name__)

MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Zipped:
    sha256: str        # '' when nothing was zipped (no files, or over the size limit)
    files: int
    too_deep: int      # entries left out for being deeper than MAX_DEPTH
    over_limit: bool   # the files add up to more than the limit; nothing is uploaded


def zip_outputs(directory: Path, archive: Path, *, max_bytes: int) -> Zipped:
    """Zip the regular files below `directory` into `archive`; nothing to upload when there are none."""
    files, too_deep = _regular_files(directory)
    if sum(size for _, size in files) > max_bytes:
        log.warning("outputs over the size limit; not uploaded", extra={"dir": str(directory), "max_bytes": max_bytes})
        return Zipped("", len(files), too_deep, True)
    if not files:
        return Zipped("", 0, too_deep, False)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, _ in files:
            fd = os.open(directory / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as src:
                st = os.fstat(src.fileno())
                info = zipfile.ZipInfo(rel, date_time=time.localtime(max(st.st_mtime, 315532800))[:6])
                info.external_attr = (stat.S_IFREG | stat.S_IMODE(st.st_mode)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
    return Zipped(file_sha256(archive), len(files), too_deep, False)


def _regular_files(directory: Path) -> tuple[list[tuple[str, int]], int]:
    """(relative path, size) of every regular file below `directory`, in path order; and how many were too deep."""
    if not directory.is_dir() or directory.is_symlink():
        return [], 0
    found: list[tuple[str, int]] = []
    too_deep = 0
    stack: list[tuple[str, int]] = [("", 0)]  # (relative dir, depth)
    while stack:
        rel_dir, depth = stack.pop()
        with os.scandir(directory / rel_dir if rel_dir else directory) as entries:
            listed = sorted(entries, key=lambda e: e.name, reverse=True)
        for entry in listed:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                if depth + 1 > MAX_DEPTH:
                    too_deep += 1
                else:
                    stack.append((rel, depth + 1))
            elif entry.is_file(follow_symlinks=False):
                found.append((rel, entry.stat(follow_symlinks=False).st_size))
    found.sort()
    return found, too_deep
