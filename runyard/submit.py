"""`runyard submit`: snapshot the directory, upload it unless the head has it, queue the run, follow it.

Following streams the run's output as it was written and ends with the run's exit code, like `sbatch -W`.
Ctrl-C while following detaches: the run goes on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from protos import runyard_pb2 as pb
from runyard import render, vocabulary
from runyard.client import Client
from runyard.jobfile import RunRequest
from runyard.snapshot import create_snapshot, git_properties

SNAPSHOT_MAX_BYTES = int(os.environ.get("RUNYARD_SNAPSHOT_MAX_BYTES", 300_000_000))
PROGRESS_FROM_BYTES = 5 * 1024 * 1024


def _upload(client: Client, path: Path, sha256: str, size: int) -> None:
    if size < PROGRESS_FROM_BYTES or not sys.stderr.isatty():
        client.upload_snapshot(path, sha256)
        return
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
    )


def submit_run(client: Client, request: RunRequest, *, detach: bool, quiet: bool) -> int:
    """Submit `request`; returns the exit code for the CLI."""
    say = (lambda text: None) if quiet else (lambda text: render.err_console.print(text, markup=False, soft_wrap=True))
    with tempfile.TemporaryDirectory(prefix="runyard-") as tmp:
        with render.err_console.status("packing snapshot", spinner="dots") if not quiet else contextlib.nullcontext():
            snapshot = create_snapshot(request.code_dir, Path(tmp), max_bytes=SNAPSHOT_MAX_BYTES)
        if client.has_snapshot(snapshot.sha256):
            say(f"snapshot {snapshot.sha256[:12]} unchanged ({snapshot.file_count} files); nothing to upload")
        else:
            _upload(client, snapshot.path, snapshot.sha256, snapshot.size_bytes)
            say(f"snapshot {snapshot.sha256[:12]} uploaded ({snapshot.file_count} files, {snapshot.size_bytes} bytes)")
    properties = git_properties(request.code_dir)
    reply = client.submit(pb.SubmitRequest(
        experiment=request.experiment, display_name=request.display_name, tags=request.tags, properties=properties,
        snapshot_sha256=snapshot.sha256, spec=_spec(request), priority=request.priority,
    ))
    if quiet:
        print(reply.run_id, flush=True)
    say(f"run {reply.run_id} queued in experiment {request.experiment}")
    if detach:
        if not quiet:
            say(f"follow it with: runyard logs -f {reply.run_id}")
        return 0
    return follow(client, reply.run_id, say=say)


def follow(client: Client, run_id: str, *, say: Callable[[str], None]) -> int:
    try:
        for line in client.logs(run_id, follow=True):
            render.write_log(line)
    except KeyboardInterrupt:
        say(f"detached; run {run_id} goes on. Follow it again with: runyard logs -f {run_id}")
        return 130
    run = client.get_run(run_id)
    if run.state == pb.RUN_STATE_COMPLETED:
        say(f"run {run_id} completed")
        return 0
    if run.state == pb.RUN_STATE_CANCELED:
        say(f"run {run_id} was canceled")
        return 1
    detail = run.events[-1].detail if run.events else ""
    say(f"run {run_id} failed: {vocabulary.word('Reason', run.reason)}" + (f" ({detail})" if detail else ""))
    return run.exit_code if run.has_exit_code and run.exit_code > 0 else 1

