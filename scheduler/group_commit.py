"""Group commit: the one thread that owns the SQLite write connection, and commits together the write
transactions that arrive while it is busy.

On a disk where a durable commit costs a flush (WAL, synchronous=FULL), N callers that each commit pay N flushes;
here they share one. Each caller still gets its own outcome: its statements run inside their own savepoint of the
shared transaction, and it is answered only after the COMMIT that holds them.
Must not: know the schema or the queries (that is the `store` package).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

MAX_GROUP = 256                 # jobs per group commit: bounds one transaction's time, not the throughput

T = TypeVar("T")
Effects = list[Callable[[], None]]
Work = Callable[[sqlite3.Connection, Effects], T]


class _Job(Generic[T]):
    """One caller's write transaction: `work(connection, effects)` and the future its caller awaits."""

    __slots__ = ("work", "future", "result", "error", "effects")

    def __init__(self, work: Work[T], future: asyncio.Future[T]) -> None:
        self.work = work
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None
        self.effects: Effects = []


class GroupCommit:
    """The thread that owns the SQLite write connection and commits, in one transaction, every job queued while it
    was busy with the previous group.

    Contract of `write(work)`: `work(connection, effects)` runs on this thread inside `SAVEPOINT job` of a shared
    `BEGIN IMMEDIATE ... COMMIT`; it may append callables to `effects`, which run on the event loop after the
    COMMIT, in commit order, before the caller resumes (in-memory state that must follow the database). The
    caller gets the result, or the exception, only once the COMMIT returned: acknowledged means durable.
    A job that raises is rolled back to its savepoint; the others of the group still commit. If SQLite abandons
    the whole transaction (a full disk, an I/O error), the jobs that had run before it are run again in a new
    transaction. A caller cancelled while its job is queued does not stop it: the job runs and commits (or
    fails) like any other, so a client's retry with the same idempotency key finds it.
    """

    def __init__(self, path: Path, synchronous: str, loop: asyncio.AbstractEventLoop, *,
                 translate: Callable[[BaseException], BaseException] = lambda err: err) -> None:
        self._path = path
        self._translate = translate     # the error a caller gets for one raised by SQLite or by its own work
        self._synchronous = synchronous
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="store-writer", daemon=True)
        self._opened: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._closing = False
        self.groups = 0             # transactions committed (or attempted), and jobs: how well writes are grouped
        self.jobs = 0
        self.on_commit: Callable[[float], None] = _ignore  # seconds one transaction took; called on this thread

    async def start(self) -> None:
        self._thread.start()
        await self._opened

    async def close(self) -> None:
        """Commit what is queued, then close the connection and end the thread."""
        if self._closing:
            return
        self._closing = True
        self._jobs.put(None)
        await self._closed

    async def write(self, work: Work[T]) -> T:
        if self._closing:
            raise RuntimeError("the store is closed")
        job: _Job[T] = _Job(work, self._loop.create_future())
        self._jobs.put(job)
        return await job.future

    # --- on the writer thread --------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):     # the loop is gone: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _serve(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
        except BaseException as err:
            self._call(_settle, self._opened, None, err)
            self._call(_settle, self._closed, None, None)
            return
        self._call(_settle, self._opened, None, None)
        try:
            stop = False
            while not stop:
                first = self._jobs.get()
                if first is None:
                    break
                group = [first]
                while len(group) < MAX_GROUP:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    group.append(job)
                todo = group
                while todo:
                    started = time.perf_counter()
                    try:
                        todo = self._commit(conn, todo)
                    except BaseException as err:  # a fault of this code: fail the group, keep serving
                        log.exception("group commit failed", extra={"jobs": len(todo)})
                        with contextlib.suppress(sqlite3.Error):
                            if conn.in_transaction:
                                conn.execute("ROLLBACK")
                        for job in todo:
                            job.error, job.effects = err, []
                        todo = []
                    self.groups += 1
                    self.on_commit(time.perf_counter() - started)
                self.jobs += len(group)
                self._call(self._deliver, group)
        finally:
            conn.close()
            self._call(_settle, self._closed, None, None)

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job[Any]]) -> list[_Job[Any]]:
        """Run `jobs` in one transaction; returns the jobs to run again because SQLite abandoned the transaction
        after they had run (their work is gone with it). Every other job ends with a result or an error."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            for job in jobs:
                job.error = self._translate(err)
            return []
        done: list[_Job[Any]] = []
        for index, job in enumerate(jobs):
            job.error, job.effects = None, []
            try:
                conn.execute("SAVEPOINT job")
            except sqlite3.Error as err:
                return self._abandon(conn, err, job, done, jobs[index + 1:])
            try:
                job.result = job.work(conn, job.effects)
            except BaseException as err:  # the caller gets it; the group goes on
                job.error = self._translate(err)
                try:
                    if not conn.in_transaction:
                        raise sqlite3.OperationalError("the transaction was rolled back")
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                except sqlite3.Error as lost:
                    return self._abandon(conn, lost, job, done, jobs[index + 1:])
                continue
            try:
                conn.execute("RELEASE job")
            except sqlite3.Error as err:
                return self._abandon(conn, err, job, done, jobs[index + 1:])
            done.append(job)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            for job in done:
                job.error, job.effects = self._translate(err), []
        return []

    def _abandon(self, conn: sqlite3.Connection, err: sqlite3.Error, culprit: _Job[Any], done: list[_Job[Any]],
                 rest: list[_Job[Any]]) -> list[_Job[Any]]:
        """The transaction is lost while `culprit` ran: it fails, the others are run again."""
        log.warning("group commit lost its transaction; running the other jobs again", extra={"error": str(err)})
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        if culprit.error is None:
            culprit.error = self._translate(err)
        culprit.effects = []
        return done + rest

    # --- on the event loop -----------------------------------------------------------------------------------

    @staticmethod
    def _deliver(group: list[_Job[Any]]) -> None:
        for job in group:
            if job.error is None:
                for effect in job.effects:
                    try:
                        effect()
                    except Exception:
                        log.exception("applying a committed write to memory failed")
            _settle(job.future, job.result, job.error)


def _ignore(seconds: float) -> None:
    return None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():   # the caller was cancelled; the write stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
