"""The per-agent cgroup watcher process, and the cgroup v2 operations the agent shares with it.

The agent starts this file once, as `python -I -S cgroup_watch.py DIR`, with its stdin the read end of a pipe
whose write end only the agent holds. It blocks reading stdin. End of file means the agent is gone, however it
went (SIGKILL included): the watcher then kills every run cgroup below DIR (`cgroup.kill`, or SIGKILL of every
pid it lists until none is left), removes them and DIR, and exits. An agent that exits normally closes the pipe
too, after stopping its runs, so the watcher finds nothing left to kill.

The agent imports the functions below to stop and remove one run's cgroup.
Stdlib only (it runs without site-packages). Must not: act on a signal (it ignores SIGINT and SIGTERM, which
are for the agent), touch cgroups outside DIR, or write to stdout.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

_POLL_S = 0.002


def cgroup_dirs(path: str) -> list[str]:
    """`path` and every cgroup below it, parents before children."""
    found: list[str] = []
    stack = [path]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            with os.scandir(current) as entries:
                stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def cgroup_pids(path: str) -> list[int]:
    """Every process in the cgroup at `path` and below it."""
    pids: list[int] = []
    for directory in cgroup_dirs(path):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                pids.extend(int(line) for line in f if line.strip())
        except (FileNotFoundError, ProcessLookupError, OSError):
            continue
    return pids


def signal_cgroup(path: str, sig: int) -> int:
    """Send `sig` to every process in the cgroup at `path` and below; returns how many were signalled."""
    sent = 0
    for pid in cgroup_pids(path):
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            pass
    return sent


def kill_cgroup(path: str) -> None:
    """SIGKILL everything in the cgroup at `path` and below: `cgroup.kill` where the kernel has it (5.14+)."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        return
    except FileNotFoundError:
        if not os.path.isdir(path):
            return
    except OSError as err:
        if err.errno == errno.ENODEV:  # removed meanwhile
            return
        raise
    signal_cgroup(path, signal.SIGKILL)


def remove_cgroup(path: str, *, timeout_s: float = 10.0) -> bool:
    """Kill everything in the cgroup at `path` and remove it and the cgroups below it; False if it stays busy.

    A killed process leaves its cgroup a moment after the signal; until then `rmdir` says EBUSY and this
    tries again, killing anew (a process that was forking may have started another).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        kill_cgroup(path)
        try:
            for directory in reversed(cgroup_dirs(path)):
                os.rmdir(directory)
            return True
        except FileNotFoundError:
            if not os.path.isdir(path):
                return True
        except OSError as err:
            if err.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)


def sweep(directory: str, *, timeout_s: float = 10.0) -> list[str]:
    """Kill and remove every cgroup directly below `directory`; returns the names of those that had processes."""
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    had_processes = [name for name in names if cgroup_pids(os.path.join(directory, name))]
    for name in names:
        remove_cgroup(os.path.join(directory, name), timeout_s=timeout_s)
    return had_processes


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: cgroup_watch.py DIR  (stdin: a pipe from the agent)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    directory = argv[1]
    while os.read(0, 4096):
        pass
    killed = sweep(directory)
    for path in (directory, os.path.dirname(directory)):  # the agent's own directory, then the one per data dir
        try:
            os.rmdir(path)
        except OSError:
            break
    if killed:
        print(f"runyard cgroup watcher: the agent is gone; killed runs {' '.join(killed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
