"""Containing runs in cgroup v2: one cgroup per attempt, one watcher process per agent.

Layout, below the agent's own cgroup (found from /proc/self/mounts and /proc/self/cgroup; in hybrid mode the
cgroup2 mount is /sys/fs/cgroup/unified, on a pure v2 host /sys/fs/cgroup):

    <agent's cgroup>/runyard-<hash of the data dir>/agent-<agent pid>/run-<run id>-<attempt>

A run is started as `sh -c 'echo 0 > "$0" && exec "$@"' <its cgroup.procs> ARGV...`: the shell moves itself into
the run's cgroup, then becomes the command, so the pid and the exit status are the command's and nothing of the
run ever runs outside its cgroup. If the shell cannot join, the command is not started. For a run with a uid of
its own ARGV begins with setpriv: the shell joins as the agent's user, and only the command drops to the run's.

At start the agent kills what an earlier agent process with the same data dir left in its own `agent-<pid>`
cgroup, then starts `cgroup_watch.py` for its own, which kills every run cgroup of this agent once the agent is
gone. A run's memory request becomes its cgroup's memory.max (and memory.swap.max = 0) where the memory
controller is enabled for it: the kernel then kills inside that run only, and the supervisor reads memory.events.
Must not: touch cgroups outside `runyard-<hash>`, or start a Python interpreter per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path

from agent import cgroup_watch
from agent.containment import Mode, Piped, exit_status, spawn_piped
from agent.errors import ContainmentUnavailable

log = logging.getLogger(__name__)

WATCHER_SCRIPT = Path(cgroup_watch.__file__).resolve()
_RESTART_PAUSE_S = 1.0
_JOIN_THEN_EXEC = 'echo 0 > "$0" && exec "$@"'
# A second line of defence for the instant before the command joins its cgroup: the direct child dies with the
# agent process. util-linux's setpriv does it without a preexec_fn, which is unsafe in a threaded process.
_TIED_TO_AGENT = ("setpriv", "--pdeathsig", "KILL", "--") if shutil.which("setpriv") else ()


def find_own_cgroup(mounts: str | None = None, membership: str | None = None) -> Path | None:
    """The directory of this process's cgroup v2, or None when there is no cgroup2 mount or membership."""
    mounts = Path("/proc/self/mounts").read_text() if mounts is None else mounts
    membership = Path("/proc/self/cgroup").read_text() if membership is None else membership
    mount = next((_unescape(f[1]) for f in (line.split() for line in mounts.splitlines())
                  if len(f) > 2 and f[2] == "cgroup2"), None)
    own = next((line[3:] for line in membership.splitlines() if line.startswith("0::")), None)
    if mount is None or own is None or "/.." in own:
        return None
    return Path(mount) / own.strip().lstrip("/")


def _unescape(field: str) -> str:
    """/proc/self/mounts writes spaces, tabs, newlines and backslashes as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:200]


def limit_memory(cgroup: Path, memory_max_bytes: int) -> bool:
    """Hold the cgroup to `memory_max_bytes`: memory.max, no swap past it (memory.swap.max = 0) and the whole run
    killed together when the kernel kills in it (memory.oom.group), each where the kernel offers it. False when
    memory.max is not there (no memory controller for this cgroup): the agent's sampler enforces the limit."""
    if not (cgroup / "memory.max").exists():
        return False
    (cgroup / "memory.max").write_text(str(memory_max_bytes))
    for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
        with contextlib.suppress(OSError):
            (cgroup / name).write_text(value)
    return True


class CgroupRun:
    def __init__(self, piped: Piped, cgroup: Path) -> None:
        self._piped = piped
        self.cgroup = cgroup
        self.pid = piped.process.pid
        self.group = piped.process.pid
        self.stdout = piped.stdout
        self.stderr = piped.stderr

    async def wait(self) -> int:
        return exit_status(await self._piped.process.wait())

    def _signal_group(self, sig: int) -> None:
        # Until the shell has joined the cgroup (a moment after the spawn) the cgroup is empty: reach the main
        # process through its process group too. Only while it is not reaped, so the number is still its own.
        if self._piped.process.returncode is None:
            try:
                os.killpg(self.group, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal_group(signal.SIGTERM)
        cgroup_watch.signal_cgroup(str(self.cgroup), signal.SIGTERM)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        cgroup_watch.kill_cgroup(str(self.cgroup))

    async def release(self) -> None:
        self._signal_group(signal.SIGKILL)
        removed = await asyncio.to_thread(cgroup_watch.remove_cgroup, str(self.cgroup))
        self._piped.close_pipes()
        if not removed:
            log.error("run cgroup stays busy after kill", extra={"cgroup": str(self.cgroup)})


class CgroupContainment:
    mode = Mode.CGROUP

    def __init__(self, own: Path) -> None:
        self.own = own                     # agent-<pid>: this agent process's run cgroups live here
        self._death_w = -1
        self._watcher: asyncio.subprocess.Process | None = None
        self._closing = False
        self.leftovers: list[str] = []     # run cgroups of an earlier agent process that still had processes

    @classmethod
    async def open(cls, *, data_dir: Path, base: Path | None = None) -> CgroupContainment:
        """Set up this agent's cgroup and its watcher; ContainmentUnavailable when cgroups cannot be used."""
        base = base or find_own_cgroup()
        if base is None or not (base / "cgroup.procs").exists():
            raise ContainmentUnavailable("no cgroup v2 hierarchy for this process")
        tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        top = base / f"runyard-{tag}"
        containment = cls(top / f"agent-{os.getpid()}")
        try:
            await asyncio.to_thread(containment._make_own_dir)
            await containment._probe()
        except OSError as err:
            raise ContainmentUnavailable(f"cannot use cgroup {top}: {err.strerror or err}") from None
        containment.leftovers = await asyncio.to_thread(containment._kill_earlier_agents)
        await containment._start_watcher()
        log.info("runs contained in cgroups", extra={"cgroup": str(containment.own)})
        return containment

    def _make_own_dir(self) -> None:
        # The watcher of an earlier agent process may remove the top directory while it empties: try again.
        for attempt in range(3):
            self.own.parent.mkdir(exist_ok=True)
            try:
                self.own.mkdir(exist_ok=True)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    async def _probe(self) -> None:
        """Move a throwaway shell into a cgroup, as a run will be: creating a directory is not enough."""
        probe = self.own / "probe"
        await asyncio.to_thread(probe.mkdir, exist_ok=True)
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", 'echo 0 > "$0"', str(probe / "cgroup.procs"),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                why = err.decode(errors="replace").strip()
                raise ContainmentUnavailable(f"cannot move a process into {probe}: {why}")
        finally:
            await asyncio.to_thread(cgroup_watch.remove_cgroup, str(probe))

    def _kill_earlier_agents(self) -> list[str]:
        killed: list[str] = []
        with os.scandir(self.own.parent) as entries:
            earlier = [e.path for e in entries if e.is_dir(follow_symlinks=False) and e.path != str(self.own)]
        for path in earlier:
            killed += cgroup_watch.sweep(path)
            with contextlib.suppress(OSError):
                os.rmdir(path)
        return killed

    async def _start_watcher(self) -> None:
        read_end, self._death_w = os.pipe()  # both close-on-exec: no run ever holds the write end
        try:
            self._watcher = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", str(WATCHER_SCRIPT), str(self.own), stdin=read_end,
                stdout=asyncio.subprocess.DEVNULL,
            )
        finally:
            os.close(read_end)

    async def spawn(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str],
                    memory_max_bytes: int = 0) -> CgroupRun:
        cgroup = self.own / f"run-{_safe_name(name)}"
        if cgroup.exists():
            await asyncio.to_thread(cgroup_watch.remove_cgroup, str(cgroup))
        await asyncio.to_thread(cgroup.mkdir)
        if memory_max_bytes > 0:
            await asyncio.to_thread(limit_memory, cgroup, memory_max_bytes)
        try:
            piped = await spawn_piped([*_TIED_TO_AGENT, "/bin/sh", "-c", _JOIN_THEN_EXEC, str(cgroup / "cgroup.procs"),
                                       *argv], cwd=cwd, env=env)
        except BaseException:
            await asyncio.to_thread(cgroup_watch.remove_cgroup, str(cgroup))
            raise
        return CgroupRun(piped, cgroup)

    async def run(self) -> None:
        """Restart the watcher if it ever dies while the agent lives (its runs would be unguarded). Ends by cancel."""
        while True:
            assert self._watcher is not None
            code = await self._watcher.wait()
            if self._closing:
                return
            log.error("cgroup watcher exited; starting it again", extra={"exit_code": code})
            os.close(self._death_w)
            self._death_w = -1          # a close() while this waits must not close it again
            await asyncio.sleep(_RESTART_PAUSE_S)  # a watcher that cannot live must not become a busy loop
            await self._start_watcher()

    async def close(self) -> None:
        self._closing = True
        if self._death_w >= 0:
            os.close(self._death_w)
            self._death_w = -1
        if self._watcher is not None:
            try:
                async with asyncio.timeout(15):
                    await self._watcher.wait()
            except TimeoutError:
                log.error("cgroup watcher did not exit", extra={"pid": self._watcher.pid})
        await asyncio.to_thread(cgroup_watch.sweep, str(self.own))
        for path in (self.own, self.own.parent):
            with contextlib.suppress(OSError):
                os.rmdir(path)
