"""How a run's whole process tree is kept together: it dies with its cancel, with its end and with its agent.

Two implementations of one seam, chosen by `run_containment` in the agent config (`app.open_containment`):

- `cgroup` (`cgroups.py`): one cgroup v2 per attempt below a per-agent cgroup. The command joins its cgroup
  before it is exec'd (a tiny `sh` writes its own pid to `cgroup.procs`, then execs the command: no Python
  start, no preexec_fn). Stopping signals every pid of the cgroup; killing writes `cgroup.kill`. One watcher
  process per agent (`cgroup_watch.py`) kills every run cgroup when the agent is gone, SIGKILL included.
- `tether` (`tethers.py`): a small subreaper process per run (`tether.py`) that spawns the command, forwards
  SIGTERM to its whole tree and kills the tree when the command exits, when asked, or when the agent is gone.
- `auto`: cgroup where the agent can create a cgroup and move a process into it, else tether.

Either way a run starts in its own session with stdin from /dev/null and stdout/stderr as pipes (of 1 MiB where
the system allows, so that a run may write ahead of the agent's reader); `wait()`
returns the command's exit status, 128 + N when a signal N killed it. The wrapper (the shell, the tether) runs
as the agent's user; a run that executes as a uid of its own has `argv` start with setpriv
(`runusers.RunUser.command`), so the wrapper joins the cgroup or becomes the subreaper first and drops the
privileges last, and the pid stays the command's.
Must not: decide when to stop a run (the run model does), or read the run's output (the supervisor does).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol




class Mode(StrEnum):
    AUTO = "auto"
    CGROUP = "cgroup"
    TETHER = "tether"


class RunProcess(Protocol):
    """One started run. `pid` is the command's own pid, as reported to the head."""

    pid: int
    group: int                         # the process group to record for a later agent (kill_leftover_groups)
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader

    async def wait(self) -> int:
        """The command's exit status once it ended (128 + N for signal N)."""
        ...

    def terminate(self) -> None:
        """SIGTERM to every process of the run; does not wait."""
        ...

    def kill(self) -> None:
        """SIGKILL to every process of the run; does not wait."""
        ...

    async def release(self) -> None:
        """After the end: make sure no process of the run is left, and free what held them. Idempotent."""
        ...


class Containment(Protocol):
    mode: Mode
    leftovers: list[str]    # what an earlier agent process left running and this one killed at start

    async def spawn(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str],
                    memory_max_bytes: int = 0) -> RunProcess:
        """Start `argv` contained; `name` is unique per attempt. Raises CannotStart if the command cannot run.
        `memory_max_bytes` > 0: the kernel's limit on the run's memory, where the containment can set one."""
        ...

    async def run(self) -> None:
        """Keep the helper processes alive until cancelled."""
        ...

    async def close(self) -> None:
        """The agent is exiting: whatever is still running dies now."""
        ...


@dataclass(slots=True, eq=False)
class Piped:
    """A started process and the read ends of its stdout and stderr, which are not tied to its life.

    asyncio (3.11) returns from `Process.wait()` only once the process's pipes are closed too, so a leftover
    background process holding stdout would hide the end of the main one. The pipes are made here instead and
    read through their own transports: `wait()` returns when the process exits, the readers at end of file.
    """

    process: asyncio.subprocess.Process
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    transports: list[asyncio.BaseTransport]

    def close_pipes(self) -> None:
        for transport in self.transports:
            transport.close()


async def spawn_piped(argv: list[str], *, cwd: Path, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> Piped:
    """Start `argv` in a new session, stdin from /dev/null, stdout and stderr into pipes of our own."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    for fd in (out_r, err_r):
        _widen_pipe(fd)
    try:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                start_new_session=True, pass_fds=pass_fds,
            )
        finally:
            os.close(out_w)
            os.close(err_w)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    loop = asyncio.get_running_loop()
    readers: list[asyncio.StreamReader] = []
    transports: list[asyncio.BaseTransport] = []
    for fd in (out_r, err_r):
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        # The factory is called at once, inside connect_read_pipe: the loop variable is the right one.
        transport, _ = await loop.connect_read_pipe(lambda: protocol, os.fdopen(fd, "rb", buffering=0))
        readers.append(reader)
        transports.append(transport)
    return Piped(process, readers[0], readers[1], transports)


PIPE_BYTES = 1024 * 1024


def _widen_pipe(fd: int) -> None:
    """Let a run write up to `PIPE_BYTES` ahead of the agent's reader (the default is 64 KiB); as much as the
    system allows (/proc/sys/fs/pipe-max-size) when that is less."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def exit_status(returncode: int) -> int:
    """A child's exit status as the agent reports it: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def record_group(path: Path, pgid: int) -> None:
    """Write down a run's process group (and when its leader started) for `kill_leftover_groups`.

    `path` must be where only the agent writes (`rundirs.AttemptDirs.pgid`): a later agent kills what it names.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{pgid} {_start_time(pgid)}")


def kill_leftover_groups(attempts_dir: Path) -> int:
    """Kill the process groups a previous agent process recorded and that still exist; returns how many.

    The head requeues those attempts (this agent cannot re-attach to their pipes), so they must not live on. A
    group whose leader is alive is killed only if that leader is the recorded process (same start time), never a
    newcomer that got the same number; a number stays taken while any member of its group lives.
    """
    found = 0
    for record in attempts_dir.glob("*/pgid"):
        with contextlib.suppress(ValueError, OSError):
            pgid_text, _, started = record.read_text().partition(" ")
            pgid = int(pgid_text)
            if _start_time(pgid) in ("", started):  # no leader left: the members are the recorded group's
                os.killpg(pgid, signal.SIGKILL)
                found += 1
        record.unlink(missing_ok=True)
    return found


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[data.rindex(b")") + 2 :].split()[19].decode()
