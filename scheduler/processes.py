"""Processes the head starts: `spawn` one without forking the head, and await its end as a `Child`.

A process is started with posix_spawn and never forked (as `asyncio.create_subprocess_exec` does under uvloop):
a forked child runs the head's at-fork handlers before it execs, and gRPC's restart its threads there, which can
kill the child (SIGSEGV, SIGABRT) before its program starts. The event loop learns of a child's exit through a
pidfd, so no child watcher is involved.

Must not: decide what to start or when to stop it (the callers do), or block the event loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence

POLL_S = 0.05       # how often a child's exit is polled where there is no pidfd


def spawn(argv: Sequence[str], *, stdin: int, stdout: int, stderr: int, env: Mapping[str, str]) -> Child:
    """Start `argv` (searched in PATH) in a session of its own, with these descriptors as its stdin, stdout and
    stderr, the default dispositions of the signals Python ignores, and no signal blocked. Raises OSError when
    the program cannot be started."""
    actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate((stdin, stdout, stderr))]
    pid = os.posix_spawnp(argv[0], list(argv), env, file_actions=actions, setsid=True,
                          setsigdef=(signal.SIGPIPE, signal.SIGXFSZ), setsigmask=())
    return Child(pid)


class Child:
    """A process started by `spawn`, reaped by the event loop once it exits (no child watcher is involved)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        self._poller: asyncio.Task[None] | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = -1
            self._poller = self._loop.create_task(self._poll(), name=f"reap-{pid}")
        else:
            self._loop.add_reader(self._pidfd, self._reap)

    async def wait(self) -> int:
        """The exit code once the process has exited; minus the signal's number when a signal ended it."""
        return await asyncio.shield(self._exited)

    def _reap(self) -> bool:
        """Collect the exit status if the process has exited; True once it has."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:   # reaped by someone else: the status is lost
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if not self._exited.done():
            self._exited.set_result(self.returncode)
        return True

    async def _poll(self) -> None:
        while not self._reap():
            await asyncio.sleep(POLL_S)
