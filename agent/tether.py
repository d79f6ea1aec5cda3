"""A run's tether: keeps one run's whole process tree together where the agent cannot use cgroups.

The agent starts it per run as `python -I -S tether.py DEATH_FD STATUS_FD -- ARGV...`, in a new session, with the
run's directory, environment and pipes. DEATH_FD is the read end of a pipe whose write end only the agent holds;
STATUS_FD is where the tether says `pid N` (the command's pid) or `error ...` (it could not start it; exit 127).
For a run with a uid of its own ARGV begins with setpriv: the tether stays the agent's user (it must signal and
reap the whole tree), and only the command drops to the run's.

The tether is a child subreaper (`PR_SET_CHILD_SUBREAPER`): whatever the command leaves behind, double-forked or
in a session of its own, is re-parented to the tether instead of init, so all of it is among its descendants.
- SIGTERM (also SIGINT, SIGHUP): sent on to every descendant; the agent's grace timer decides what comes next.
- SIGUSR1: SIGKILL to every descendant.
- The command exits: SIGKILL to whatever it left, and exit with the command's status (128 + N for signal N).
- DEATH_FD reaches end of file (the agent exited or was SIGKILLed): SIGKILL to every descendant, then exit.
In every case it exits only after it has reaped every descendant.

Stdlib only (it runs without site-packages). Must not: write to its stdout or stderr (they belong to the run),
or leave a descendant alive when it exits.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
EXIT_CANNOT_START = 127
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def descendants(root: int) -> list[int]:
    """Every living (or not yet reaped) process below `root`, read from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def _signal_all(sig: int) -> None:
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _exit_code(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Tether:
    def __init__(self, command_pid: int) -> None:
        self.command_pid = command_pid
        self.exit_code: int | None = None

    def _note(self, pid: int, wait_status: int) -> None:
        if pid == self.command_pid:
            self.exit_code = _exit_code(wait_status)

    def reap_ready(self) -> bool:
        """Reap every child that has ended; True when there are no children left at all."""
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            self._note(pid, wait_status)

    def kill_all(self) -> None:
        """SIGKILL every descendant until none is left, reaping each (new forks are found on the next pass)."""
        while True:
            _signal_all(signal.SIGKILL)
            try:
                pid, wait_status = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            self._note(pid, wait_status)
            if self.reap_ready():
                return


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        return 2
    death_fd, status_fd, command = int(argv[1]), int(argv[2]), argv[4:]
    os.set_inheritable(death_fd, False)
    os.set_inheritable(status_fd, False)

    def say(text: str) -> None:
        os.write(status_fd, text.encode("utf-8", "backslashreplace") + b"\n")
        os.close(status_fd)

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        say(f"error cannot contain the run: prctl: {os.strerror(ctypes.get_errno())}")
        return EXIT_CANNOT_START

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    received: list[int] = []
    for handled in (*_FORWARDED, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(handled, lambda signum, frame: received.append(signum))

    try:
        pid = os.posix_spawnp(command[0], command, dict(os.environ), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    except OSError as err:
        say(f"error cannot start {command[0]!r}: {err.strerror}")
        return EXIT_CANNOT_START
    say(f"pid {pid}")

    tether = Tether(pid)
    while True:
        tether.reap_ready()
        if tether.exit_code is not None:
            break
        while received:
            sig = received.pop(0)
            if sig == signal.SIGUSR1:
                tether.kill_all()
            elif sig in _FORWARDED:
                _signal_all(sig)
        if tether.exit_code is not None:
            break
        ready, _, _ = select.select([death_fd, wake_r], [], [])
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        if death_fd in ready and not os.read(death_fd, 512):
            break  # the agent is gone
    tether.kill_all()
    return 128 + signal.SIGKILL if tether.exit_code is None else tether.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
