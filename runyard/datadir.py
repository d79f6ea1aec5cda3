"""The lock that gives a data directory to one process: `runyard up` holds its directory, the head holds its own.

`DataDirLock.take(directory)` takes an exclusive `flock` on `<directory>/runyard.lock` and writes the holder's PID
in it. The lock lasts until `release()` or until the process ends, however it ends: the kernel drops it with the
last descriptor, so a crashed holder never leaves a stale lock behind. The descriptor is close-on-exec, so the
processes a holder starts (agents, runs) never inherit it. `DataDirLock.check(directory)` asks the same question
without taking the directory.

A second process on a directory in use gets `DataDirInUse` naming the holder's PID, having changed nothing: the
lock file is opened without truncation and only its holder ever writes it.
Must not: write anything but the lock file, or wait for a holder to go away.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path

from runyard.errors import DataDirInUse, RunyardError

LOCK_FILE = "runyard.lock"
# A holder writes its PID just after taking the lock; a reader that comes in between waits this long for it.
_PID_WAIT_S = 0.5


class DataDirLock:
    """An exclusive lock on one data directory, held by this process."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def take(cls, directory: Path, *, also_free: Sequence[Path] = ()) -> DataDirLock:
        """Lock `directory` (created if missing) for this process; `DataDirInUse` if another process holds it, or
        holds one of the directories `also_free` (checked once `directory` is locked, before the PID is written)."""
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise RunyardError(f"cannot use data directory {directory}: {err.strerror}") from None
        _lock(fd, directory)
        try:
            for other in also_free:
                cls.check(other)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(directory, fd)

    @staticmethod
    def check(directory: Path) -> None:
        """Raise `DataDirInUse` if another process holds `directory`; changes nothing, creates nothing."""
        directory = Path(directory)
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # a holder always has the file: nobody holds this directory
        except OSError as err:
            raise RunyardError(f"cannot use data directory {directory}: {err.strerror}") from None
        _lock(fd, directory)
        os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(fd: int, directory: Path) -> None:
    """Lock the open lock file `fd` without waiting; on `DataDirInUse` (or any failure) `fd` is closed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise DataDirInUse(str(directory), pid) from None
    except BaseException:
        os.close(fd)
        raise


def _holder(fd: int) -> int | None:
    """The PID written in the lock file, or None if the holder has not written it yet (or wrote garbage)."""
    deadline = time.monotonic() + _PID_WAIT_S
    while True:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
