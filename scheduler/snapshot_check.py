"""Checks of uploaded snapshots, each in a process of its own: what `UploadSnapshot` awaits before it stores one.

`runyard.snapshot.validate_archive` reads every byte an upload unpacks to. In the head's process a hostile archive
would hold the GIL for as long as that takes and leave the head with whatever zipfile allocated. Here each check is
a fresh `python -m scheduler.snapshot_check` process, started without forking the head (`scheduler.processes`), at
a lower CPU priority and with limits on its CPU time and address space, killed once it outlives `timeout_s`. It
cannot stall other calls, and its memory goes with it.

Why a process per check and not a `concurrent.futures.ProcessPoolExecutor`: the pool cannot stop one running task;
killing its worker breaks the pool and fails every other check in it. Its workers are also forked or forkserved
from the head, and its queues add threads to it. A check's start-up (about 100 ms on the 2-core development
machine, most of it importing Python modules) is paid once per new snapshot; an unchanged one is not uploaded again.

At most `workers` checks run at once. Further uploads wait for a free slot (their bytes are already on disk), and
their time limit starts when their check does.

Must not: read an archive in the head's process, or leave a check process behind: each is killed and reaped before
`check` returns or raises, and `close` ends those still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path
from typing import IO

from runyard.errors import SnapshotInvalid, UsageError
from runyard.snapshot import validate_archive
from scheduler.errors import HeadError
from scheduler.processes import Child, spawn

log = logging.getLogger(__name__)

# What one check process may take: address space (a check streams the archive; the largest part it holds is
# zipfile's list of entries, bounded by the entry limit) and the CPU priority it yields to the head at.
CHECK_MEMORY_BYTES = 1 << 30
CHECK_NICENESS = 10
_OUTPUT_KEPT_BYTES = 64 << 10   # of a check's stdout (one JSON line) and stderr (a traceback, at worst)


class SnapshotChecks:
    """Runs `validate_archive` on uploads in separate processes, `workers` at a time, each within `timeout_s`."""

    def __init__(self, *, max_entries: int, max_unpacked_bytes: int, timeout_s: float, workers: int) -> None:
        if workers < 1:
            raise UsageError(f"config: snapshot_check_workers must be at least 1, not {workers}")
        if not timeout_s > 0:
            raise UsageError(f"config: snapshot_check_timeout_s must be more than 0, not {timeout_s:g}")
        self._max_entries = max_entries
        self._max_unpacked_bytes = max_unpacked_bytes
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(workers)
        self._running: set[Child] = set()
        self._closing = False

    async def check(self, path: Path) -> None:
        """Return once the archive at `path` is safe to store.

        Raises `SnapshotInvalid` when it is not, when its check outlived the time limit or was killed for going over
        its CPU or memory limit; `HeadError` when the check process failed in another way (its stderr is logged).
        """
        cpu_s = math.ceil(self._timeout_s) + 1  # a backstop, should the head die before it can kill the check
        argv = [sys.executable, "-m", "scheduler.snapshot_check", str(path), str(self._max_entries),
                str(self._max_unpacked_bytes), str(cpu_s)]
        async with self._slots:
            # Output goes to files, not pipes: nothing to drain while the check runs, nothing lost if it is killed.
            with open(os.devnull, "rb") as devnull, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                child = spawn(argv, stdin=devnull.fileno(), stdout=out.fileno(), stderr=err.fileno(), env=os.environ)
                self._running.add(child)
                try:
                    async with asyncio.timeout(self._timeout_s):
                        returncode = await child.wait()
                except TimeoutError:
                    log.info("snapshot check timed out", extra={"path": str(path), "timeout_s": self._timeout_s})
                    raise SnapshotInvalid(SnapshotInvalid.WHOLE, f"checking it took longer than {self._timeout_s:g} "
                                          "s, the head's snapshot_check_timeout_s") from None
                finally:
                    if child.returncode is None:
                        _kill(child)
                        await child.wait()
                    self._running.discard(child)
                said, stderr = _tail(out), _tail(err)
        if self._closing:
            raise HeadError("the head stopped while it checked the snapshot; upload it again")
        _answer(returncode, said, stderr)

    async def close(self) -> None:
        """Kill the checks still running and wait for them to end; their `check` calls raise `HeadError`."""
        self._closing = True
        running = list(self._running)
        for child in running:
            _kill(child)
        for child in running:
            await child.wait()


def _kill(child: Child) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # not reaped yet, so the pid is still the check's
            os.kill(child.pid, signal.SIGKILL)


def _tail(file: IO[bytes]) -> bytes:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - _OUTPUT_KEPT_BYTES))
    return file.read()


def _answer(returncode: int, out: bytes, err: bytes) -> None:
    """Turn what a check process said into nothing (safe), `SnapshotInvalid`, or `HeadError`."""
    if returncode < 0 and -returncode in (signal.SIGKILL, signal.SIGXCPU):
        # The kernel ends a check over its CPU limit with SIGXCPU, and the OOM killer picks the largest process.
        name = signal.Signals(-returncode).name
        log.warning("snapshot check killed", extra={"signal": name})
        raise SnapshotInvalid(SnapshotInvalid.WHOLE, f"its check was killed ({name}) for using too much CPU or memory")
    try:
        said = json.loads(out) if returncode == 0 else None
    except ValueError:
        said = None
    if not isinstance(said, dict):
        log.error("snapshot check failed", extra={"returncode": returncode,
                                                  "stderr": err.decode(errors="replace")})
        raise HeadError("the snapshot check failed; the head's log says why")
    if said:
        raise SnapshotInvalid(str(said["entry"]), str(said["why"]))


# --- the check process ----------------------------------------------------------------------------------------


def _limit_self(cpu_s: int) -> None:
    """Yield the CPU to the head, and take SIGXCPU after `cpu_s` of CPU time and MemoryError past the address space
    limit; a limit the head already runs under that is lower stays."""
    os.nice(CHECK_NICENESS)
    _lower(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
    _lower(resource.RLIMIT_AS, CHECK_MEMORY_BYTES, CHECK_MEMORY_BYTES)


def _lower(kind: int, soft: int, hard: int) -> None:
    _, current = resource.getrlimit(kind)
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    resource.setrlimit(kind, (min(soft, hard), hard))


def main(argv: list[str]) -> None:
    """`python -m scheduler.snapshot_check PATH MAX_ENTRIES MAX_UNPACKED_BYTES CPU_S`: print one JSON object,
    `{}` for a safe archive or `{"entry": ..., "why": ...}` for a refused one, and exit 0."""
    path, max_entries, max_unpacked_bytes, cpu_s = argv
    _limit_self(int(cpu_s))
    answer: dict[str, str] = {}
    try:
        validate_archive(Path(path), max_entries=int(max_entries), max_bytes=int(max_unpacked_bytes))
    except SnapshotInvalid as refused:
        answer = {"entry": refused.entry, "why": refused.why}
    except MemoryError:
        answer = {"entry": SnapshotInvalid.WHOLE,
                  "why": f"checking it takes more than {CHECK_MEMORY_BYTES // 2**20:,} MiB of memory"}
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
