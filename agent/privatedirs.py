"""Directories the agent keeps its own in places others may write to (/tmp, /run): made safely, or refused.

Someone may have created the path first, as a link to elsewhere or as a directory of theirs that they can fill
or swap. `own_directory` creates the directory with its mode, or takes the existing one only if it is a real
directory of this process's user that neither group nor others may write to, then sets the mode through a
descriptor opened without following links.
Must not: follow a link, or take a directory someone else could have written in.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.errors import UnsafeDirectory


def own_directory(path: Path, mode: int, *, create: bool = True) -> None:
    """Make `path` a directory of ours with `mode`; UnsafeDirectory (one line: what, why, what to do) if it is
    a link, not a directory, someone else's, or writable by group or others."""
    euid = os.geteuid()
    if create:
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass
    st = os.lstat(path)
    why = ""
    if stat.S_ISLNK(st.st_mode):
        why = "it is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        why = "it is not a directory"
    elif st.st_uid != euid:
        why = f"it belongs to uid {st.st_uid}, not to this agent (uid {euid})"
    elif st.st_mode & 0o022:
        why = f"group or others may write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        raise UnsafeDirectory(f"will not use {path}: {why}; remove it, or configure another place")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
