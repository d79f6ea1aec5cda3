"""What a run's user may reach on this machine, judged from owners and mode bits as the kernel judges them.

The agent is usually root, and `os.access` answers for the agent, not for a run. A run's uid has no
supplementary groups (setpriv clears them), so for each path the owner, group or other bits decide, in that
order. A run that keeps the agent's user is answered by `os.access`. ACLs and security modules are not read:
this is for choosing paths that work (a run's directory, its python), not a security boundary.
Must not: change anything on disk.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.runusers import RunUser

_SEARCH = 0o1   # the x bit of the "other" class; shifted by 3 for the group's, by 6 for the owner's


def _allows(st: os.stat_result, uid: int, gid: int, bit: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid == gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def _ways(path: Path) -> list[Path]:
    """Every directory a lookup of `path` passes through: the parents of the path as written and as resolved."""
    written = Path(os.path.abspath(path))
    resolved = Path(os.path.realpath(path))
    seen: dict[Path, None] = {}
    for found in (*reversed(written.parents), *reversed(resolved.parents)):
        seen.setdefault(found, None)
    return list(seen)


def closed_directory(path: Path, user: RunUser) -> Path | None:
    """The first directory on the way to `path` (`path` included) that `user` cannot search; None when none is."""
    for directory in [*_ways(path), Path(os.path.realpath(path))]:
        if not _may(directory, user, _SEARCH, os.X_OK):
            return directory
    return None


def may_execute(path: Path, user: RunUser) -> bool:
    """True when `user` can exec `path`: every directory on the way searchable, the file executable for them."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    return all(_may(d, user, _SEARCH, os.X_OK) for d in _ways(path)) and _may(path, user, _SEARCH, os.X_OK)


def _may(path: Path, user: RunUser, bit: int, access_mode: int) -> bool:
    if not user.switches:
        return os.access(path, access_mode)
    try:
        return _allows(os.stat(path), user.uid, user.gid, bit)
    except OSError:
        return False
