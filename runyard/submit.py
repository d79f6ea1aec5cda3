"""`runyard submit`: snapshot the directory, upload it unless the head has it, queue the run, follow it.

A directory zipped before and unchanged since (`SnapshotCache`) is neither zipped nor hashed again: the run is
submitted at once with the hash it had, one round trip; only when the head no longer has that snapshot is the
directory zipped and uploaded. With `-d`, the run id is printed on stdout (as `sbatch` does; `--parsable` prints
nothing else); progress lines go to stderr.

Following streams the run's output as it was written and ends with the run's exit code, like `sbatch -W`.
While the run waits in the queue, the reason it waits is printed to stderr each time it changes (`QueueWatch`).
Ctrl-C while following detaches: the run goes on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from protos import runyard_pb2 as pb
from runyard import render, vocabulary
from runyard.client import Client
from runyard.envwire import env_to_pb
from runyard.errors import FailedPrecondition, RunyardError
from runyard.snapshot import Listing, SnapshotCache, git_properties, scan_directory, write_snapshot
from runyard.units import plural

if TYPE_CHECKING:
    from runyard.runrequest import RunRequest

SNAPSHOT_MAX_BYTES = int(os.environ.get("RUNYARD_SNAPSHOT_MAX_BYTES", 300_000_000))
PROGRESS_FROM_BYTES = 5 * 1024 * 1024
# A run that starts at once has printed its first line before this; only a run still silent then costs a GetRun.
QUEUE_FIRST_LOOK_S = 1.0
QUEUE_LOOK_MAX_S = 5.0     # looks are spaced out up to this while the reason stays the same


def _upload(client: Client, path: Path, sha256: str, size: int) -> None:
    if size < PROGRESS_FROM_BYTES or not sys.stderr.isatty():
        client.upload_snapshot(path, sha256)
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("uploading snapshot", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=render.err_console, transient=True) as progress:
        task = progress.add_task("upload", total=size)
        client.upload_snapshot(path, sha256, lambda n: progress.advance(task, n))


def _spec(request: RunRequest) -> pb.RunSpec:
    return pb.RunSpec(
        argv=request.argv,
        environment=request.environment,
        resources=pb.Resources(cpus=request.cpus, memory_bytes=request.memory_bytes, gpus=request.gpus,
                               instance_count=request.instance_count, gpu_model=request.gpu_model,
                               gpu_memory_bytes=request.gpu_memory_bytes, node_labels=request.node_labels),
        timeout_s=request.timeout_s,
        compute=request.compute,
        max_retries=request.max_retries,
        env=None if request.env.empty else env_to_pb(request.env),
        env_ref=request.env_ref,
        distribution=pb.Distribution(type=request.distribution, process_count_per_instance=request.procs_per_node,
                                     worker_count=request.workers,
                                     parameter_server_count=request.parameter_servers)
        if request.distribution else None,
    )


def submit_run(client: Client, request: RunRequest, *, detach: bool, quiet: bool,
               cache: SnapshotCache | None = None) -> int:
    """Submit `request`; returns the exit code for the CLI."""
    say = (lambda text: None) if quiet else render.say
    cache = cache or SnapshotCache()
    listing = scan_directory(request.code_dir, max_bytes=SNAPSHOT_MAX_BYTES)
    submit = pb.SubmitRequest(
        experiment=request.experiment, display_name=request.display_name, tags=request.tags,
        properties=git_properties(request.code_dir), spec=_spec(request), priority=request.priority,
    )
    reply = None
    known = cache.get(listing)
    if known is not None:
        submit.snapshot_sha256 = known.sha256
        try:
            reply = client.submit(submit)
            say(f"snapshot {known.sha256[:12]} unchanged ({plural(known.file_count, 'file')}); nothing to upload")
        except FailedPrecondition:
            if client.has_snapshot(known.sha256):
                raise   # refused for another reason than the snapshot
    if reply is None:
        submit.snapshot_sha256 = _upload_snapshot(client, listing, cache, say, quiet=quiet)
        reply = client.submit(submit)   # the same idempotency key: a retry is the same run
    if detach or quiet:
        print(reply.run_id, flush=True)
    say(f"run {reply.run_id} queued in experiment {request.experiment}")
    if detach:
        say(f"follow it with: runyard logs -f {reply.run_id}")
        return 0
    return follow(client, reply.run_id, say=say, watch_queue=not quiet)


def _upload_snapshot(client: Client, listing: Listing, cache: SnapshotCache, say: Callable[[str], None], *,
                     quiet: bool) -> str:
    """Zip the listed directory, upload it unless the head has it, remember its hash; returns the hash."""
    with tempfile.TemporaryDirectory(prefix="runyard-") as tmp:
        packing = not quiet and sys.stderr.isatty()
        with render.err_console.status("packing snapshot", spinner="dots") if packing else contextlib.nullcontext():
            snapshot = write_snapshot(listing, Path(tmp), max_bytes=SNAPSHOT_MAX_BYTES)
        files = plural(snapshot.file_count, "file")
        if client.has_snapshot(snapshot.sha256):
            say(f"snapshot {snapshot.sha256[:12]} unchanged ({files}); nothing to upload")
        else:
            _upload(client, snapshot.path, snapshot.sha256, snapshot.size_bytes)
            say(f"snapshot {snapshot.sha256[:12]} uploaded ({files}, {plural(snapshot.size_bytes, 'byte')})")
        cache.put(listing, snapshot)
    return snapshot.sha256


class RunLookup(Protocol):
    """What `QueueWatch` needs of the client."""

    def get_run(self, run_id: str) -> pb.Run: ...


class QueueWatch:
    """Says why a followed run is still queued, once per reason, until it leaves the queue or `stop()`.

    The log stream has no room for the pending reason, so a thread asks `GetRun`: first after
    QUEUE_FIRST_LOOK_S (a run that starts at once is never asked about), then at growing intervals up to
    QUEUE_LOOK_MAX_S while the reason stays the same. It ends when the run is no longer Queued, on `stop()`
    (the first log line, the end of the stream, Ctrl-C), or on an error of the head, which the log stream
    reports itself. `stop()` returns only once the thread printed its last line.
    """

    def __init__(self, client: RunLookup, run_id: str, say: Callable[[str], None], *,
                 first_look_s: float = QUEUE_FIRST_LOOK_S, max_look_s: float = QUEUE_LOOK_MAX_S) -> None:
        self._client, self._run_id, self._say = client, run_id, say
        self._first_look_s, self._max_look_s = first_look_s, max_look_s
        self._stopped = threading.Event()
        self._printing = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name=f"queue-watch-{run_id}", daemon=True)

    def start(self) -> QueueWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """No line is printed after this returns; the thread ends after its current GetRun, if any."""
        if not self._stopped.is_set():
            with self._printing:
                self._stopped.set()

    def join(self) -> None:
        self._thread.join()

    def _watch(self) -> None:
        shown, wait_s = "", self._first_look_s
        while not self._stopped.wait(wait_s):
            try:
                run = self._client.get_run(self._run_id)
            except RunyardError:
                return  # the log stream meets the same failure and reports it
            if run.state != pb.RUN_STATE_QUEUED:
                return
            reason = run.pending_reason
            if not reason or reason == shown:
                wait_s = min(self._max_look_s, wait_s * 1.5)
                continue
            with self._printing:
                if self._stopped.is_set():
                    return
                self._say(f"queued: {reason}")
            shown, wait_s = reason, self._first_look_s


def follow(client: Client, run_id: str, *, say: Callable[[str], None], watch_queue: bool = True) -> int:
    watch = QueueWatch(client, run_id, say).start() if watch_queue else None
    try:
        writer = render.LogWriter()
        for chunk in client.logs(run_id, follow=True):
            if watch is not None:
                watch.stop()
            writer.write(chunk)
    except KeyboardInterrupt:
        say(f"detached; run {run_id} goes on. Follow it again with: runyard logs -f {run_id}")
        return 130
    finally:
        if watch is not None:
            watch.stop()
            watch.join()
    return outcome(client, run_id, say=say)


def outcome(client: RunLookup, run_id: str, *, say: Callable[[str], None]) -> int:
    """Say how the run ended; its exit code for the CLI (`submit` and `logs -f` end with it): 0 completed, the
    run's own exit code when it failed with one, else 1."""
    run = client.get_run(run_id)
    if run.state == pb.RUN_STATE_COMPLETED:
        say(f"run {run.id} completed")
        return 0
    if run.state == pb.RUN_STATE_CANCELED:
        say(f"run {run.id} was canceled")
        return 1
    detail = run.events[-1].detail if run.events else ""
    say(f"run {run.id} failed: {vocabulary.word('Reason', run.reason)}" + (f" ({detail})" if detail else ""))
    return run.exit_code if run.has_exit_code and run.exit_code > 0 else 1
