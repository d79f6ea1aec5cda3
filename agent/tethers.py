"""Containing runs with a tether process each (`tether.py`), where cgroups are not available.

Every tether holds the read end of one pipe whose write end only the agent holds: when the agent is gone,
SIGKILL included, every tether reads end of file and kills its run's tree. Stopping a run is a SIGTERM to its
tether, which sends it on to the whole tree; killing is a SIGUSR1 (the tether SIGKILLs the tree and reaps it).
This costs one Python start (`-I -S`, no site-packages) per run. Must not: signal a tether's process group
while the tether lives (the tether reaps its tree; signalling around it would race it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from agent import tether
from agent.containment import Mode, Piped, exit_status, spawn_piped
from agent.errors import CannotStart

log = logging.getLogger(__name__)

TETHER_SCRIPT = Path(tether.__file__).resolve()
_RELEASE_TIMEOUT_S = 10.0


class TetherRun:
    def __init__(self, piped: Piped, command_pid: int) -> None:
        self._piped = piped
        self._proc = piped.process
        self.pid = command_pid
        self.group = piped.process.pid    # the tether leads the run's session and process group
        self.stdout = piped.stdout
        self.stderr = piped.stderr

    async def wait(self) -> int:
        return exit_status(await self._proc.wait())

    def _signal(self, sig: int) -> None:
        if self._proc.returncode is None:
            try:
                os.kill(self._proc.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGUSR1)

    async def release(self) -> None:
        self.kill()
        try:
            async with asyncio.timeout(_RELEASE_TIMEOUT_S):
                await self._proc.wait()
        except TimeoutError:
            log.error("tether did not exit; killing its process group", extra={"pid": self._proc.pid})
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self._proc.wait()
        self._piped.close_pipes()


class TetherContainment:
    mode = Mode.TETHER

    def __init__(self) -> None:
        self.leftovers: list[str] = []  # an earlier agent's tethers killed their runs when it went
        self._death_r, self._death_w = os.pipe()  # close-on-exec: only tethers get the read end, on purpose
        log.info("runs contained by tethers")

    async def spawn(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str],
                    memory_max_bytes: int = 0) -> TetherRun:
        # No kernel limit without a cgroup: the agent's sampler (`usage.py`) holds the run to its memory request.
        status_r, status_w = os.pipe()
        try:
            tether_argv = [sys.executable, "-I", "-S", str(TETHER_SCRIPT), str(self._death_r), str(status_w), "--"]
            piped = await spawn_piped([*tether_argv, *argv], cwd=cwd, env=env, pass_fds=(self._death_r, status_w))
        finally:
            os.close(status_w)
        try:
            status = await asyncio.to_thread(_read_to_end, status_r)
        finally:
            os.close(status_r)
        if not status.startswith("pid "):
            await piped.process.wait()
            piped.close_pipes()
            raise CannotStart(status.removeprefix("error ") or f"the tether of {name} exited at once")
        return TetherRun(piped, int(status.split()[1]))

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to keep alive: each tether lives and dies with its run

    async def close(self) -> None:
        for fd in (self._death_w, self._death_r):
            if fd >= 0:
                os.close(fd)
        self._death_w = self._death_r = -1


def _read_to_end(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace").strip()
