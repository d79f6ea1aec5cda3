"""Removing a directory tree a run wrote, however deep, without following links and without recursion.

A run can leave anything in its directory: thousands of nested directories (deeper than Python's recursion
limit, and paths longer than PATH_MAX), symbolic links to the agent's own files, directories it emptied of
permissions. `remove_tree` walks down one directory at a time through directory file descriptors opened with
`O_NOFOLLOW` (a link is removed, never followed), keeps only one descriptor open whatever the depth, and climbs
back with `..`, checking that it arrived where it came from (device and inode) before removing anything there.
A directory swapped for a link between the scan and the descent is unlinked, not entered. Only `path`'s parent
is opened by name, following links: it must be the agent's own directory, out of the run's reach.
Blocking: call it through `asyncio.to_thread` from the event loop. Must not: recurse, follow a symbolic link, or
hold a descriptor per level.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from runyard.descriptors import DIR_FLAGS

_RESCANS = 3  # a directory that keeps refilling while it is removed is an error after this many scans


class TreeMoved(OSError):
    """A directory being removed was moved away meanwhile; the removal stopped rather than remove elsewhere."""


@dataclass(slots=True)
class _Level:
    name: str                     # the name of this directory in its parent
    dev: int
    ino: int
    subdirs: list[str] = field(default_factory=list)
    scans: int = 0


def remove_tree(path: Path) -> None:
    """Remove `path` and everything below it; a missing path is fine, a link at `path` is removed itself."""
    path = Path(path)
    try:
        parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        try:
            st = os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            _unlink(path.name, parent_fd)
            return
        _remove_dir(parent_fd, path.name)
    finally:
        os.close(parent_fd)


def _remove_dir(top_parent_fd: int, top_name: str) -> None:
    top_parent = os.fstat(top_parent_fd)
    fd = _open_dir(top_name, top_parent_fd)
    try:
        levels = [_enter(fd, top_name)]
        while levels:
            level = levels[-1]
            if level.subdirs:
                name = level.subdirs.pop()
                try:
                    child = _open_dir(name, fd)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    _unlink(name, fd)  # swapped for a link or a file since the scan: removed, not followed
                    continue
                os.close(fd)
                fd = child
                levels.append(_enter(fd, name))
                continue
            # Every entry of this directory is gone: climb to its parent and remove it there.
            levels.pop()
            up = os.open("..", DIR_FLAGS, dir_fd=fd) if levels else os.dup(top_parent_fd)
            os.close(fd)
            fd = up
            _check_is(fd, (levels[-1].dev, levels[-1].ino) if levels else (top_parent.st_dev, top_parent.st_ino),
                      level.name)
            try:
                os.rmdir(level.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as err:
                if err.errno != errno.ENOTEMPTY or level.scans >= _RESCANS:
                    raise
                # Something was created in it meanwhile: go back in and scan it again.
                child = _open_dir(level.name, fd)
                os.close(fd)
                fd = child
                _check_is(fd, (level.dev, level.ino), level.name)
                _scan(fd, level)
                levels.append(level)
    finally:
        os.close(fd)


def _check_is(fd: int, expected: tuple[int, int], name: str) -> None:
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != expected:
        raise TreeMoved(errno.ESTALE, "directory moved while it was being removed", name)


def _enter(fd: int, name: str) -> _Level:
    st = os.fstat(fd)
    if st.st_mode & 0o700 != 0o700:
        # A directory the run made read-only: its entries cannot be unlinked until its owner may write it.
        try:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        except PermissionError:
            pass
    level = _Level(name, st.st_dev, st.st_ino)
    _scan(fd, level)
    return level


def _scan(fd: int, level: _Level) -> None:
    """Unlink every non-directory in the directory at `fd`; remember its subdirectories."""
    level.scans += 1
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if is_dir:
                level.subdirs.append(entry.name)
            else:
                _unlink(entry.name, fd)


def _open_dir(name: str, parent_fd: int) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        # A directory the run made unsearchable: give its owner access back through a descriptor that cannot
        # be a link (O_PATH | O_NOFOLLOW), then enter it.
        path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
        finally:
            os.close(path_fd)
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
