"""Running assigned attempts: snapshot -> process -> logs and metrics -> outputs -> exit report.

One task per attempt, all in the agent's TaskGroup. Each attempt runs in its own session and process group
(`start_new_session`), so a cancel or a timeout stops the whole group: SIGTERM, `stop_grace_s`, SIGKILL. When the
main process exits, what is left of its group is killed too. The final state is what this supervisor observed:
the exit code, and why it stopped it (timeout, cancel), never what the script claimed.
Everything the head must learn goes through the outbox, so it survives the head being away.
Must not: talk gRPC itself (the `HeadFiles` seam fetches and uploads).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import AgentConfig
from agent.outbox import Outbox
from agent.output import read_records
from agent.records import RecordTail
from agent.removal import remove_tree
from agent.snapshots import HeadFiles, SnapshotCache
from protos import runyard_pb2 as pb
from runyard.errors import SnapshotInvalid
from runyard.snapshot import safe_extract

log = logging.getLogger(__name__)

CANCELED = "canceled_by_user"
TIMEOUT = "timeout"
SNAPSHOT_INVALID = "snapshot_invalid"
_SDK_FILES = ("__init__.py", "sdk.py", "ids.py")
# The run dies with the agent process (PR_SET_PDEATHSIG): an agent that is SIGKILLed cannot re-attach to its runs'
# pipes, and the head will requeue them, so they must not live on. util-linux's setpriv does it without a
# preexec_fn, which is unsafe in a threaded process.
_TIED_TO_AGENT = ("setpriv", "--pdeathsig", "KILL", "--") if shutil.which("setpriv") else ()


@dataclass(slots=True, eq=False)
class Attempt:
    assignment: pb.Assignment
    task: asyncio.Task[None] | None = None
    stop_reason: str = ""
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> tuple[str, int]:
        return self.assignment.run_id, self.assignment.attempt


def install_sdk(dest: Path) -> Path:
    """Copy the stdlib-only SDK (`from runyard import Run`) to `dest/runyard`; returns the dir for PYTHONPATH."""
    import runyard

    source = Path(runyard.__file__).parent
    package = dest / "runyard"
    package.mkdir(parents=True, exist_ok=True)
    for name in _SDK_FILES:
        shutil.copyfile(source / name, package / name)
    return dest


def kill_leftovers(runs_dir: Path) -> int:
    """Kill process groups of attempts a previous agent process left running; returns how many it found.

    The head requeues those attempts (this agent cannot re-attach to their pipes), so they must not live on:
    at most one live attempt per run.
    """
    found = 0
    for pgid_file in runs_dir.glob("*/*/pgid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pgid_file.read_text()), signal.SIGKILL)
            found += 1
        pgid_file.unlink(missing_ok=True)
    return found


class Supervisor:
    def __init__(self, *, config: AgentConfig, outbox: Outbox, files: HeadFiles, tasks: asyncio.TaskGroup) -> None:
        self._config = config
        self._outbox = outbox
        self._files = files
        self._tasks = tasks
        self._attempts: dict[tuple[str, int], Attempt] = {}
        self._runs_dir = config.data_path / "runs"
        self._snapshots = SnapshotCache(config.data_path / "snapshots", files)
        self._sdk_dir = install_sdk(config.data_path / "sdk")
        self._python_bin = config.python_bin_dir or str(Path(sys.executable).parent)

    def live(self) -> set[tuple[str, int]]:
        return set(self._attempts)

    def start(self, assignment: pb.Assignment) -> None:
        attempt = Attempt(assignment)
        if attempt.key in self._attempts:
            return  # assignment resent after a reconnect
        self._attempts[attempt.key] = attempt
        attempt.task = self._tasks.create_task(self._supervise(attempt), name=f"run-{assignment.run_id}-{assignment.attempt}")

    def stop(self, run_id: str, attempt: int, reason: str) -> None:
        found = self._attempts.get((run_id, attempt))
        if found is not None and not found.stop_requested.is_set():
            log.info("stopping run", extra={"run_id": run_id, "attempt": attempt, "reason": reason})
            found.stop_reason = reason
            found.stop_requested.set()

    async def stop_all(self) -> None:
        """Stop every attempt (agent shutdown) and wait for them to report."""
        for attempt in list(self._attempts.values()):
            self.stop(*attempt.key, reason="agent_stopped")
        tasks = [a.task for a in self._attempts.values() if a.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _report(self, a: Attempt, phase: int, **fields: object) -> None:
        update = pb.RunUpdate(run_id=a.assignment.run_id, attempt=a.assignment.attempt, phase=phase, at=time.time(), **fields)
        self._outbox.put(pb.AgentMessage(run_update=update))

    async def _supervise(self, a: Attempt) -> None:
        run_id, number = a.key
        workdir = self._runs_dir / run_id / str(number)
        try:
            self._report(a, pb.RunUpdate.PREPARING)
            code_dir = await self._prepare(a, workdir)
            if code_dir is None:
                return
            exit_code, reason = await self._execute(a, workdir, code_dir)
            self._report(a, pb.RunUpdate.FINALIZING)
            outputs_sha = await self._upload_outputs(a, workdir, code_dir / "outputs")
            self._report(a, pb.RunUpdate.EXITED, exit_code=exit_code, reason=reason, outputs_sha256=outputs_sha,
                         detail=f"exit code {exit_code}" + (f" ({reason})" if reason else ""))
            log.info("run exited", extra={"run_id": run_id, "attempt": number, "exit_code": exit_code, "reason": reason})
        except Exception as err:
            log.exception("run supervision failed", extra={"run_id": run_id, "attempt": number})
            self._report(a, pb.RunUpdate.EXITED, exit_code=-1, reason="agent_error", detail=f"agent error: {err}")
        finally:
            self._attempts.pop(a.key, None)
            try:
                await asyncio.to_thread(remove_tree, workdir / "code")
            except Exception:
                log.exception("removing the run's code failed", extra={"run_id": run_id, "attempt": number})

    async def _prepare(self, a: Attempt, workdir: Path) -> Path | None:
        """Fetch and safely extract the snapshot; None when the attempt ended here (reported)."""
        asg = a.assignment
        fetch = asyncio.ensure_future(self._snapshots.archive(asg.snapshot_sha256, asg.run_id, asg.attempt))
        stop = asyncio.ensure_future(a.stop_requested.wait())
        await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
            self._report(a, pb.RunUpdate.EXITED, exit_code=-1, reason=a.stop_reason, detail="stopped while preparing")
            return None
        archive = fetch.result()
        code_dir = workdir / "code"
        await asyncio.to_thread(remove_tree, code_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(
                safe_extract, archive, code_dir, max_entries=self._config.snapshot_max_entries,
                max_bytes=self._config.snapshot_max_bytes,
            )
        except SnapshotInvalid as err:
            self._report(a, pb.RunUpdate.EXITED, exit_code=-1, reason=SNAPSHOT_INVALID, detail=str(err))
            return None
        return code_dir

    def _environment(self, a: Attempt, code_dir: Path) -> dict[str, str]:
        asg = a.assignment
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
        env.update(asg.spec.environment)
        env.update(asg.extra_env)
        pythonpath = [str(self._sdk_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env.update(
            PATH=f"{self._python_bin}{os.pathsep}{env.get('PATH', os.defpath)}",
            PYTHONPATH=os.pathsep.join(pythonpath),
            PYTHONUNBUFFERED="1",
            RUNYARD_RUN_ID=asg.run_id,
            RUNYARD_PARENT_RUN_ID=asg.parent_run_id,
            RUNYARD_EXPERIMENT=asg.experiment,
            RUNYARD_WORKSPACE=asg.workspace,
            RUNYARD_ATTEMPT=str(asg.attempt),
            RUNYARD_OUTPUTS_DIR=str(code_dir / "outputs"),
            RUNYARD_RECORDS_FILE=str(code_dir.parent / "records.jsonl"),
            CUDA_VISIBLE_DEVICES=",".join(str(i) for i in asg.gpu_indices),
        )
        return env

    async def _execute(self, a: Attempt, workdir: Path, code_dir: Path) -> tuple[int, str]:
        """Run the command to its end; returns (exit code, reason it was stopped or '')."""
        (code_dir / "outputs").mkdir(exist_ok=True)
        records_file = workdir / "records.jsonl"
        records_file.unlink(missing_ok=True)
        try:
            proc = await asyncio.create_subprocess_exec(
                *_TIED_TO_AGENT, *a.assignment.spec.argv, cwd=code_dir, env=self._environment(a, code_dir),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            self._system_line(a, f"cannot start {a.assignment.spec.argv[0]!r}: {err.strerror}")
            return 127, ""
        (workdir / "pgid").write_text(str(proc.pid))
        self._report(a, pb.RunUpdate.RUNNING, pid=proc.pid)
        logs = LogShipper(a.assignment, self._outbox, flush_s=self._config.log_flush_s)
        metrics = MetricShipper(a.assignment, self._outbox, RecordTail(records_file))
        reason = ""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(logs.run(), name="ship-logs")
            tasks.create_task(metrics.run(), name="ship-metrics")
            readers = [
                tasks.create_task(read_records(proc.stdout, pb.STDOUT, logs.add, record_bytes=self._config.log_record_bytes)),  # type: ignore[arg-type]
                tasks.create_task(read_records(proc.stderr, pb.STDERR, logs.add, record_bytes=self._config.log_record_bytes)),  # type: ignore[arg-type]
            ]
            reason = await self._wait(a, proc)
            _kill_group(proc.pid, signal.SIGKILL)  # whatever the run left behind
            await asyncio.gather(*readers)
            logs.close()
            metrics.close()
        (workdir / "pgid").unlink(missing_ok=True)
        code = proc.returncode if proc.returncode is not None else -1
        return (128 - code if code < 0 else code), reason

    async def _wait(self, a: Attempt, proc: asyncio.subprocess.Process) -> str:
        """Wait for the process; stop it on cancel or timeout. Returns why it was stopped, or ''."""
        timeout_s = a.assignment.spec.timeout_s or None
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(a.stop_requested.wait())
        try:
            done, _ = await asyncio.wait({exited, stop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if exited in done:
                return ""
            reason = a.stop_reason if stop in done else TIMEOUT
            self._system_line(a, f"stopping the run: {reason}; SIGTERM, then SIGKILL after {self._config.stop_grace_s:g}s")
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), self._config.stop_grace_s)
            except TimeoutError:
                _kill_group(proc.pid, signal.SIGKILL)
                await exited
            return reason
        finally:
            stop.cancel()

    def _system_line(self, a: Attempt, text: str) -> None:
        record = pb.LogRecord(stream=pb.SYSTEM, seq=int(time.time_ns()), ts=time.time(), data=text.encode())
        self._outbox.put(pb.AgentMessage(logs=pb.LogBatch(run_id=a.assignment.run_id, attempt=a.assignment.attempt, records=[record])))

    async def _upload_outputs(self, a: Attempt, workdir: Path, outputs: Path) -> str:
        if not outputs.is_dir() or not any(outputs.iterdir()):
            return ""
        archive = workdir / "outputs.zip"
        sha = await asyncio.to_thread(_zip_dir, outputs, archive, self._config.outputs_max_bytes)
        if sha:
            await self._files.upload_outputs(a.assignment.run_id, a.assignment.attempt, archive, sha)
        archive.unlink(missing_ok=True)
        return sha


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _zip_dir(directory: Path, archive: Path, max_bytes: int) -> str:
    """Zip the regular files under `directory` (links are not followed); '' when over `max_bytes`."""
    total = 0
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            total += path.stat().st_size
            if total > max_bytes:
                log.warning("outputs over the size limit; not uploaded", extra={"dir": str(directory)})
                return ""
            zf.write(path, path.relative_to(directory).as_posix())
    return _sha256(archive)


class LogShipper:
    """Batches log records of one attempt into the outbox every `flush_s`; a full outbox turns into a gap record."""

    def __init__(self, assignment: pb.Assignment, outbox: Outbox, *, flush_s: float) -> None:
        self._asg = assignment
        self._outbox = outbox
        self._flush_s = flush_s
        self._batch: list[pb.LogRecord] = []
        self._dropped: dict[int, int] = {}
        self._closed = asyncio.Event()

    def add(self, record: pb.LogRecord) -> None:
        if self._outbox.full():
            self._dropped[record.stream] = self._dropped.get(record.stream, 0) + 1
            return
        if self._dropped.get(record.stream):
            count = self._dropped.pop(record.stream)
            self._batch.append(pb.LogRecord(stream=record.stream, seq=record.seq - 1, ts=record.ts, gap=True,
                                            data=f"{count} records dropped: the agent's buffer was full".encode()))
        self._batch.append(record)

    def flush(self) -> None:
        if self._batch:
            self._outbox.put(pb.AgentMessage(logs=pb.LogBatch(run_id=self._asg.run_id, attempt=self._asg.attempt, records=self._batch)))
            self._batch = []

    def close(self) -> None:
        self._closed.set()

    async def run(self) -> None:
        """Flush periodically until closed, then flush what is left."""
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._flush_s)
            self.flush()


class MetricShipper:
    """Tails the SDK's record file of one attempt into metric batches in the outbox."""

    def __init__(self, assignment: pb.Assignment, outbox: Outbox, tail: RecordTail, *, poll_s: float = 0.2) -> None:
        self._asg = assignment
        self._outbox = outbox
        self._tail = tail
        self._poll_s = poll_s
        self._closed = asyncio.Event()

    def close(self) -> None:
        self._closed.set()

    def ship(self) -> int:
        records = [r for r in self._tail.read_new() if not r.run]
        batch = pb.MetricBatch(run_id=self._asg.run_id, attempt=self._asg.attempt)
        for r in records:
            batch.records.add(
                seq=r.seq, params=r.params, tags=r.tags,
                points=[pb.MetricPoint(key=k, value=v, step=s, ts=r.ts) for k, v, s in r.metrics],
            )
        if records:
            self._outbox.put(pb.AgentMessage(metrics=batch))
        return len(records)

    async def run(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._poll_s)
            while self.ship():
                pass
