"""Walking a directory tree through descriptors, one step at a time, never following a link: how the agent, often
root, reaches into directories a run may write to, and how a snapshot is unpacked.

Must not: follow a link at any step, or leave a descriptor open when it raises.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_below(top: int, parts: Sequence[str], *, create: bool = False, mode: int = 0o700) -> int:
    """A new descriptor of `parts` below the directory `top` (which stays open); OSError at a step that is a link
    or not a directory, with that step as its `filename`. With `create`, a missing step is made with `mode`."""
    fd = os.dup(top)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd
