"""Running assigned attempts: the I/O shell around `runmodel.RunModel`.

One task per attempt, in the agent's TaskGroup. It feeds the attempt's model events and performs the actions
the model returns: the snapshot through the `SnapshotCache`, safe extraction, the run's environment through
`Environments` (its build output into the attempt's BUILD stream, what happens to it as SYSTEM lines; the lease
on it held until the attempt's directory is gone), the process through the `Containment` (in a container when
the environment is an image), its output through a spool per stream into the outbox (drained, all of it, before
the attempt reports its end), timers on the `Clock`, outputs through `HeadFiles`.
Long actions run as jobs in a TaskGroup of the attempt; a job ends by queueing its event, and a job that fails
queues `Failed`.
Stops from the head or the cut-off watch are queued events too, so the model sees one event at a time.

Every failure inside one attempt (a job, an action, the model itself, the cleanup) is caught here: the attempt
is reported EXITED with reason agent_error and the cause in `detail`, and the agent and its other runs go on.
Everything the head must learn goes through the outbox, so it survives the head being away.

When the agent serves MLflow's tracking API (`tracking.py`), each attempt gets a token there, registered before
its process starts (its lines go to its records file, the first rank's on this node for a distributed run) and
forgotten once the process has ended, before the outputs are zipped with the MLflow artifacts it uploaded.

While its process lives, the `RunSampler` (`usage.py`) samples the attempt's CPU, memory and GPUs as its system
metrics; the run's memory request is its cgroup's memory.max where the kernel offers it, else the sampler calls
back when the run goes over it and its tree is killed. Either way its end is reported `oom_killed`, the detail
naming its peak.

Each attempt runs as its own `RunUser` (`runusers.py`), taken before its snapshot is fetched (an attempt that
has none fails at once, saying what to change) and given back only once its directory is gone. Its directory
(`rundirs.py`) is handed over to that user just before the command starts.
Must not: talk gRPC itself (the `HeadFiles` seam does), decide what the model decides, or remove a directory
tree other than with `removal.remove_tree`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runyard.clock import Clock
from agent.config import AgentConfig
from agent.containers import (
    CLIENT_AS_AGENT, SIF_NAME, ContainerRun, Mount, Runtime, container_env, container_name, remove_argv, run_argv,
)
from agent import ranks
from agent.containment import Containment, RunProcess, record_group
from agent.envbuild import EnvKind
from agent.environments import Environments, Lease, Watcher
from agent.errors import CannotStart, EnvironmentUnavailable, NoRunUser
from agent.outbox import Outbox
from agent.output import Cutter
from agent.outputs_archive import MAX_DEPTH, zip_outputs
from agent.records import RecordTail
from agent.removal import remove_tree
from agent.rundirs import AttemptDirs, RunRoot, hand_over, make_attempt_dir
from agent.runenv import check_command, install_sdk, python_dir, run_environment
from agent.runusers import RunUser, RunUsers
from agent.runmodel import (
    AbortBuild, AbortFetch, AbortUpload, Accept, Action, ArmGrace, ArmTimeLimit, BuildEnvironment, DrainOutput,
    EnvironmentFailed, EnvironmentReady, Event, Extracted, ExtractSnapshot, Failed, Fetched, FetchSnapshot, GraceOver,
    KillTree, OutputDrained, Phase, ProcessExited, Reason, Report, RunModel, SnapshotRejected, StartFailed, Started,
    StartProcess, StopRequested, SystemLine, Terminate, TimeLimitReached, Uploaded, UploadOutputs, WatchProcess,
)
from agent.wire import env_spec_from_pb, reason_to_pb
from agent.shipping import METRIC_BATCH_LINES, LogShipper, MetricShipper
from agent.snapshots import HeadFiles, SnapshotCache
from agent.spool import Spool, SpoolBudget, copy_pipe, make_spool_dir
from agent.tracking import TrackingServer, artifact_sources, new_token
from agent.usage import RunSampler, Source, describe_over
from protos import runyard_pb2 as pb
from runyard.errors import SnapshotInvalid
from runyard.sdk import RECORDS_FILE_ENV
from runyard.snapshot import safe_extract

log = logging.getLogger(__name__)

_PHASES = {Phase.PREPARING: pb.RunUpdate.PREPARING, Phase.RUNNING: pb.RunUpdate.RUNNING,
           Phase.FINALIZING: pb.RunUpdate.FINALIZING, Phase.EXITED: pb.RunUpdate.EXITED}
_DRAIN_TIMEOUT_S = 30.0   # output pipes still open this long after the run's tree was killed: stop reading
_CONTAINER_REMOVAL_TIMEOUT_S = 60.0
_DETAIL_CHARS = 500

__all__ = ["HeadFiles", "Supervisor"]


@dataclass(slots=True)
class _Output:
    logs: LogShipper
    metrics: list[MetricShipper]           # one per records file: per process of a distributed run
    readers: list[asyncio.Task[None]]
    shippers: list[asyncio.Task[None]]


@dataclass(slots=True, eq=False)
class _Attempt:
    assignment: pb.Assignment
    model: RunModel
    dirs: AttemptDirs
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    jobs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    group: asyncio.TaskGroup | None = None
    task: asyncio.Task[None] | None = None
    archive: Path | None = None
    process: RunProcess | None = None
    output: _Output | None = None
    user: RunUser | None = None
    lease: Lease | None = None                  # the run's environment, held until its directory is gone
    container_removal: list[str] | None = None  # makes sure the run's container is gone (podman, docker)
    stop_logged: bool = False
    usage: Source | None = None                 # where the sampler reads the run's use
    oom_detail: str = ""                        # set once its memory ended the run
    tracking_token: str = ""                    # the attempt's token at the agent's MLflow endpoint

    @property
    def key(self) -> tuple[str, int]:
        return self.assignment.run_id, self.assignment.attempt

    @property
    def code_dir(self) -> Path:
        return self.dirs.code

    @property
    def fields(self) -> dict[str, object]:
        return {"run_id": self.assignment.run_id, "attempt": self.assignment.attempt}


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return text[:_DETAIL_CHARS]


class Supervisor:
    def __init__(self, *, config: AgentConfig, outbox: Outbox, files: HeadFiles, tasks: asyncio.TaskGroup,
                 clock: Clock, containment: Containment, users: RunUsers, root: RunRoot,
                 environments: Environments | None = None, tracking: TrackingServer | None = None,
                 sampler: RunSampler | None = None) -> None:
        self._config = config
        self._outbox = outbox
        self._files = files
        self._tasks = tasks
        self._clock = clock
        self._containment = containment
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._users = users
        self._root = root
        self._environments = environments
        self._tracking = tracking
        self._sampler = sampler
        self._snapshots = SnapshotCache(config.data_path / "snapshots", files)
        self._sdk_dir = install_sdk(root.sdk)
        self._python_bin = python_dir(config.python_bin_dir, users.sample(), root.bin)

    def live(self) -> set[tuple[str, int]]:
        return set(self._attempts)

    def start(self, assignment: pb.Assignment) -> None:
        key = (assignment.run_id, assignment.attempt)
        if key in self._attempts:
            return  # assignment resent after a reconnect
        has_environment = not env_spec_from_pb(assignment.spec.env).empty
        model = RunModel(timeout_s=assignment.spec.timeout_s, grace_s=self._config.stop_grace_s,
                         has_environment=has_environment)
        attempt = _Attempt(assignment, model, self._root.attempt(assignment.run_id, assignment.attempt))
        self._attempts[key] = attempt
        attempt.task = self._tasks.create_task(self._supervise(attempt),
                                               name=f"run-{assignment.run_id}-{assignment.attempt}")

    def stop(self, run_id: str, attempt: int, reason: Reason, detail: str = "") -> None:
        found = self._attempts.get((run_id, attempt))
        if found is None:
            return
        if not found.stop_logged:
            found.stop_logged = True
            log.info("stopping run", extra={**found.fields, "reason": reason, "detail": detail})
        found.events.put_nowait(StopRequested(reason, detail))

    async def stop_all(self) -> None:
        """Stop every attempt (agent shutdown) and wait for them to report."""
        for key in list(self._attempts):
            self.stop(*key, reason=Reason.AGENT_STOPPED)
        tasks = [a.task for a in self._attempts.values() if a.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the loop of one attempt ---------------------------------------------------------------------------

    async def _supervise(self, a: _Attempt) -> None:
        """Drive one attempt to its EXITED report; never raises but CancelledError (agent exit)."""
        try:
            async with asyncio.TaskGroup() as group:
                a.group = group
                await self._drive(a)
                for job in a.jobs.values():
                    job.cancel()
        except Exception as err:  # a bug in the shell or the model, or an ExceptionGroup from the jobs
            log.exception("run supervision failed", extra=a.fields)
            self._fail(a, _describe(err))
        finally:
            await self._release(a)
            self._attempts.pop(a.key, None)

    async def _drive(self, a: _Attempt) -> None:
        event: Event | None = Accept()
        while not a.model.done:
            if event is None:
                event = await a.events.get()
            actions = a.model.handle(event)
            event = None
            for action in actions:
                try:
                    self._perform(a, action)
                except Exception as err:
                    log.exception("run action failed", extra={**a.fields, "action": type(action).__name__})
                    if not a.model.done:
                        event = Failed(f"{type(action).__name__}: {_describe(err)}")
                    break

    def _fail(self, a: _Attempt, detail: str) -> None:
        """End an attempt whose loop broke: report agent_error through the model, or directly if that fails too."""
        if a.model.done:
            return
        try:
            for action in a.model.handle(Failed(detail)):
                if isinstance(action, (Report, KillTree)):
                    self._perform(a, action)
        except Exception:
            log.exception("run could not be failed through its model", extra=a.fields)
            self._report(a, Report(Phase.EXITED, exit_code=-1, reason=Reason.AGENT_ERROR,
                                   detail=f"agent error: {detail}"))

    def _perform(self, a: _Attempt, action: Action) -> None:
        match action:
            case Report():
                self._report(a, action)
            case FetchSnapshot():
                self._job(a, "fetch", self._fetch(a))
            case AbortFetch():
                self._cancel(a, "fetch")
            case ExtractSnapshot():
                self._job(a, "extract", self._extract(a))
            case BuildEnvironment():
                self._job(a, "build", self._build(a))
            case AbortBuild():
                self._cancel(a, "build")
            case StartProcess():
                self._job(a, "start", self._start(a))
            case WatchProcess():
                self._job(a, "watch", self._watch(a))
            case ArmTimeLimit(seconds=seconds):
                self._job(a, "time-limit", self._after(seconds, TimeLimitReached()))
            case SystemLine(text=text):
                self._system_line(a, text)
            case Terminate():
                assert a.process is not None
                a.process.terminate()
            case ArmGrace(seconds=seconds):
                self._job(a, "grace", self._after(seconds, GraceOver()))
            case KillTree():
                if a.process is not None:
                    a.process.kill()
            case DrainOutput():
                self._job(a, "drain", self._drain(a))
            case UploadOutputs():
                self._job(a, "upload", self._upload(a))
            case AbortUpload():
                self._cancel(a, "upload")

    def _job(self, a: _Attempt, name: str, work: Coroutine[Any, Any, Event | None]) -> asyncio.Task[None]:
        """Run `work` in the attempt's TaskGroup; queue the event it returns, or Failed if it raises."""
        async def job() -> None:
            try:
                event = await work
            except Exception as err:
                log.exception("run step failed", extra={**a.fields, "step": name})
                event = Failed(f"{name}: {_describe(err)}")
            if event is not None:
                a.events.put_nowait(event)

        assert a.group is not None
        task = a.group.create_task(job(), name=f"{name}-{a.assignment.run_id}-{a.assignment.attempt}")
        a.jobs[name] = task
        return task

    def _cancel(self, a: _Attempt, name: str) -> None:
        job = a.jobs.get(name)
        if job is not None:
            job.cancel()

    # --- jobs ----------------------------------------------------------------------------------------------

    async def _fetch(self, a: _Attempt) -> Event:
        asg = a.assignment
        try:
            a.user = self._users.take(a.key)
        except NoRunUser as err:
            return Failed(str(err))
        a.archive = await self._snapshots.archive(asg.snapshot_sha256, asg.run_id, asg.attempt)
        return Fetched()

    async def _extract(self, a: _Attempt) -> Event:
        assert a.archive is not None
        await asyncio.to_thread(make_attempt_dir, a.dirs)  # an earlier agent process's copy is removed first
        try:
            await asyncio.to_thread(safe_extract, a.archive, a.code_dir, max_entries=self._config.snapshot_max_entries,
                                    max_bytes=self._config.snapshot_max_bytes)
        except SnapshotInvalid as err:
            return SnapshotRejected(str(err))
        return Extracted()

    async def _build(self, a: _Attempt) -> Event:
        """Get the run's environment: its build's output goes to the attempt's BUILD stream as it comes."""
        if self._environments is None:
            return EnvironmentFailed("this agent builds no environments", node_fault=True)
        asg = a.assignment
        shipper = LogShipper(asg, self._outbox, flush_s=self._config.log_flush_s)
        self._job(a, "ship-build", shipper.run())
        seq = itertools.count()

        def output(record: pb.LogRecord) -> None:
            shipper.add(pb.LogRecord(stream=pb.BUILD, seq=next(seq), ts=record.ts, data=record.data,
                                     continued=record.continued))

        watcher = Watcher(output=output, note=lambda text: self._system_line(a, text))
        try:
            a.lease = await self._environments.acquire(env_spec_from_pb(asg.spec.env), asg.spec.env_hash,
                                                       watcher=watcher)
        except EnvironmentUnavailable as err:
            return EnvironmentFailed(err.detail, node_fault=err.node_fault)
        finally:
            shipper.close()
            shipper.flush()
        return EnvironmentReady(str(a.lease.path))

    async def _start(self, a: _Attempt) -> Event:
        asg, user, lease = a.assignment, a.user, a.lease
        assert user is not None
        env_dir = str(lease.path) if lease is not None and lease.kind is not EnvKind.IMAGE else ""
        token = new_token() if self._tracking is not None else ""
        env = run_environment(asg, dirs=a.dirs, user=user, sdk_dir=self._sdk_dir, python_bin=self._python_bin,
                              extra=self._config.run_environment, env_dir=env_dir,
                              env_variable="CONDA_PREFIX" if lease is not None and lease.kind is EnvKind.CONDA
                              else "VIRTUAL_ENV", tracking_uri=self._tracking.uri if self._tracking else "",
                              tracking_token=token)
        argv = list(asg.spec.argv)
        started: list[tuple[int, RunProcess]] = []
        hostfile = str(a.dirs.top / ranks.HOSTFILE)     # an MPI run's, written below
        launches = ranks.launches(asg.spec, env, free_port=_free_port,
                                  hostfile_path=hostfile) if asg.spec.distribution.type else []
        process_ranks = _process_ranks(asg.spec, launches)
        await asyncio.to_thread(hand_over, a.dirs, user, process_ranks)
        records = [(rank, a.dirs.rank_records(rank)) for rank in process_ranks] or [(0, a.dirs.records)]
        if self._tracking is not None:
            self._tracking.register(token, run_id=asg.run_id, experiment=asg.experiment, records=records[0][1],
                                    staging=a.dirs.artifacts)
            a.tracking_token = token
        helpers: list[RunProcess] = []      # a distributed run's store host, beside its processes
        try:
            if launches:
                if lease is not None and lease.kind is EnvKind.IMAGE:
                    raise CannotStart("cannot start the run: a distributed run in an image is not supported yet")
                check_command(argv, cwd=a.code_dir, env=env, user=user)
                if asg.spec.distribution.type == ranks.MPI:
                    await asyncio.to_thread(_write_hostfile, hostfile, ranks.hostfile(asg.spec, env))
                await asyncio.to_thread(ranks.check_ports, ranks.listened_ports(asg.spec, launches))
                if ranks.hosts_store(asg.spec, launches):
                    store = await self._host_store(a, launches[0].env, user)
                    if store is not None:
                        helpers.append(store)
                        launches = [ranks.Launch(launch.rank, {**launch.env, **ranks.USE_AGENT_STORE})
                                    for launch in launches]
                for launch in launches:
                    # each process appends to its own records file; a launcher's workers fill in their RANK
                    own = "{RANK}" if ranks.is_launcher(asg.spec.argv) else launch.rank
                    started.append((launch.rank, await self._containment.spawn(
                        f"{asg.run_id}-{asg.attempt}-r{launch.rank}", user.command(argv), cwd=a.code_dir,
                        env={**launch.env, RECORDS_FILE_ENV: str(a.dirs.rank_records(own))})))
                process: RunProcess = ranks.Ranks(started, grace_s=self._config.stop_grace_s, sleep=self._clock.sleep,
                                                  helpers=helpers)
            else:
                if lease is not None and lease.kind is EnvKind.IMAGE:
                    command, env = self._in_container(a, lease, argv, env, user)
                else:
                    check_command(argv, cwd=a.code_dir, env=env, user=user)
                    command = user.command(argv)
                process = await self._containment.spawn(f"{asg.run_id}-{asg.attempt}", command, cwd=a.code_dir,
                                                        env=env, memory_max_bytes=asg.spec.resources.memory_bytes)
                started.append((0, process))
        except (CannotStart, OSError) as err:
            for begun in [*(p for _, p in started), *helpers]:   # what did start of a distributed run must not
                begun.kill()                                        # live on
                await begun.release()
            if isinstance(err, CannotStart):
                return StartFailed(str(err))
            return StartFailed(f"cannot start {argv[0]!r}: {err.strerror or err}")
        a.process = process
        record_group(a.dirs.pgid, process.group)
        a.output = self._ship_output(a, started, records)
        self._sample(a, [p for _, p in started])
        return Started(process.pid)

    def _sample(self, a: _Attempt, processes: list[RunProcess]) -> None:
        """Have the sampler watch the attempt's processes: their cgroups, else their trees. Where the kernel does
        not hold the run to its memory request, the sampler calls back when it goes over: its tree is killed."""
        if self._sampler is None:
            return
        asg = a.assignment
        cgroups = [c for c in (getattr(p, "cgroup", None) for p in processes) if isinstance(c, Path)]
        a.usage = Source(cgroups=cgroups if len(cgroups) == len(processes) else (), pids=[p.pid for p in processes])
        request = asg.spec.resources.memory_bytes

        def over_limit(peak: int) -> None:
            if a.process is None or a.oom_detail:
                return
            a.oom_detail = describe_over(peak, request)
            log.warning("run over its memory request; killing it", extra={**a.fields, "peak_bytes": peak,
                                                                           "request_bytes": request})
            a.process.kill()

        self._sampler.watch(asg.run_id, asg.attempt, a.usage, workspace=asg.workspace,
                            gpu_indices=list(asg.gpu_indices), memory_request_bytes=request, over_limit=over_limit)

    async def _host_store(self, a: _Attempt, env: dict[str, str], user: RunUser) -> RunProcess | None:
        """Start the run's TCPStore beside its processes, as its own uid, in its environment (`ranks.STORE_HOST`);
        None, with the ranks left to host it as without torchrun, when torch is not there or it does not start."""
        asg = a.assignment
        store = await self._containment.spawn(f"{asg.run_id}-{asg.attempt}-store",
                                              user.command(["python", "-c", ranks.STORE_HOST]), cwd=a.code_dir,
                                              env=env)
        try:
            said = await asyncio.wait_for(store.stdout.readline(), _STORE_START_S)
        except TimeoutError:
            said = b""
        if said.strip() == b"ready":
            return store
        store.kill()
        code = await store.wait()
        await store.release()
        if code != ranks.NO_TORCH:
            self._system_line(a, f"the rendezvous store did not start (exit {code}): rank 0 hosts it")
        return None

    def _in_container(self, a: _Attempt, lease: Lease, argv: list[str], env: dict[str, str],
                      user: RunUser) -> tuple[list[str], dict[str, str]]:
        """The command and its environment that run `argv` in the run's image (`containers.py`)."""
        assert self._environments is not None
        builders = self._environments.builders
        if builders.runtime is None:
            raise CannotStart("cannot start the run: its image needs a container runtime and this node has none")
        asg, runtime = a.assignment, builders.runtime
        image = str(lease.path / SIF_NAME) if runtime is Runtime.APPTAINER else asg.spec.env.image
        uid, gid = (user.uid, user.gid) if user.switches else (os.getuid(), os.getgid())
        name = container_name(asg.run_id, asg.attempt)
        run = ContainerRun(runtime=runtime, binary=builders.runtime_bin, image=image, name=name, argv=tuple(argv),
                           workdir=str(a.code_dir), mounts=(Mount(str(a.dirs.top)), Mount(str(self._sdk_dir), True)),
                           env_names=tuple(sorted(env)), uid=uid, gid=gid, gpus=tuple(asg.gpu_indices))
        a.container_removal = remove_argv(runtime, builders.runtime_bin, name)
        command = run_argv(run)
        return (command if runtime in CLIENT_AS_AGENT else user.command(command)), container_env(
            runtime, env, asg.gpu_indices)

    def _ship_output(self, a: _Attempt, processes: list[tuple[int, RunProcess]],
                     records: list[tuple[int, Path]]) -> _Output:
        """Copy each process's output into its spool (`spool.py`) as fast as it comes, ship the spools' records,
        and each records file as metrics, carrying its rank (one process: rank 0, as ever)."""
        logs = LogShipper(a.assignment, self._outbox, flush_s=self._config.log_flush_s)
        metrics = [MetricShipper(a.assignment, self._outbox,
                                 RecordTail(path, max_lines_per_call=METRIC_BATCH_LINES), rank=rank) for rank, path in records]
        size = self._config.log_record_bytes
        spool_dir = make_spool_dir(a.dirs.spool)
        budget = SpoolBudget(self._config.log_spool_max_bytes)

        # a launcher's output holds its workers' lines, each marked with its rank
        tagged = [rank for rank, _ in records] if ranks.is_launcher(a.assignment.spec.argv) else []
        ranked = bool(a.assignment.spec.distribution.type)
        readers: list[asyncio.Task[None]] = []
        for rank, process in processes:
            for name, stream, kind in (("stdout", process.stdout, pb.STDOUT), ("stderr", process.stderr, pb.STDERR)):
                spool = Spool(spool_dir, f"{name}-r{rank}", budget)
                logs.follow(spool, Cutter(kind, record_bytes=size, rank=rank, tagged=tagged))
                readers.append(self._job(a, f"{name}-r{rank}" if ranked else name, copy_pipe(stream, spool)))
        return _Output(
            logs, metrics, readers=readers,
            shippers=[self._job(a, "ship-logs", logs.run()),
                      *(self._job(a, f"ship-metrics-r{shipper.rank}", shipper.run()) for shipper in metrics)],
        )

    async def _watch(self, a: _Attempt) -> Event:
        assert a.process is not None
        code = await a.process.wait()
        return ProcessExited(code, rank=await _failed_rank(a.process, code), oom_detail=await self._oom(a))

    async def _oom(self, a: _Attempt) -> str:
        """Why the run's memory ended it, or "": the sampler killed it over its request, or the kernel's OOM
        killer killed in its cgroup (memory.events); the detail names its peak, the kernel's or the highest sample."""
        if self._sampler is None or a.usage is None:
            return a.oom_detail
        asg = a.assignment
        kills = await asyncio.to_thread(a.usage.oom_kills)
        peak = await asyncio.to_thread(self._sampler.forget, asg.run_id, asg.attempt)
        if not a.oom_detail and kills:
            a.oom_detail = describe_over(peak, asg.spec.resources.memory_bytes)
        return a.oom_detail

    async def _after(self, seconds: float, event: Event) -> Event:
        await self._clock.sleep(seconds)
        return event

    async def _drain(self, a: _Attempt) -> Event:
        assert a.output is not None
        out = a.output
        done, pending = await asyncio.wait(out.readers, timeout=_DRAIN_TIMEOUT_S)
        if pending:
            log.warning("run output still open after its end; no longer read", extra=a.fields)
            for reader in pending:
                reader.cancel()
            self._system_line(a, "output written after the run's end was not read: a process outside the run held it")
        out.logs.close()        # every spool is closed: what they hold is shipped before the shippers end
        for shipper in out.metrics:
            shipper.close()
        await asyncio.gather(*out.shippers)
        return OutputDrained()

    async def _upload(self, a: _Attempt) -> Event:
        asg = a.assignment
        archive = a.dirs.outputs_zip
        owner = a.user.uid if a.user is not None and a.user.switches else None
        self._forget_token(a)       # no artifact arrives while they are zipped
        try:
            artifacts = await asyncio.to_thread(artifact_sources, a.dirs.artifacts, asg.run_id)
            zipped = await asyncio.to_thread(zip_outputs, a.dirs.outputs, archive,
                                             max_bytes=self._config.outputs_max_bytes, owner=owner, extra=artifacts)
            if zipped.too_deep:
                self._system_line(
                    a, f"outputs: {zipped.too_deep} directories deeper than {MAX_DEPTH} levels were left out")
            if zipped.over_limit:
                self._system_line(a, f"outputs: over the limit of {self._config.outputs_max_bytes} bytes; not uploaded")
            if zipped.sha256:
                await self._files.upload_outputs(asg.run_id, asg.attempt, archive, zipped.sha256)
        finally:
            archive.unlink(missing_ok=True)
        return Uploaded(zipped.sha256)

    # --- immediate actions and cleanup -----------------------------------------------------------------------

    def _report(self, a: _Attempt, report: Report) -> None:
        asg = a.assignment
        update = pb.RunUpdate(run_id=asg.run_id, attempt=asg.attempt, phase=_PHASES[report.phase], at=time.time(),
                              exit_code=report.exit_code, reason=reason_to_pb(report.reason), detail=report.detail,
                              pid=report.pid, outputs_sha256=report.outputs_sha256)
        self._outbox.put(pb.AgentMessage(run_update=update))
        if report.phase is Phase.EXITED:
            log.info("run exited", extra={**a.fields, "exit_code": report.exit_code, "reason": report.reason or "",
                                          "detail": report.detail})

    def _forget_token(self, a: _Attempt) -> None:
        if self._tracking is not None and a.tracking_token:
            self._tracking.forget(a.tracking_token)
            a.tracking_token = ""

    def _system_line(self, a: _Attempt, text: str) -> None:
        record = pb.LogRecord(stream=pb.SYSTEM, seq=int(time.time_ns()), ts=time.time(), data=text.encode())
        self._outbox.put(pb.AgentMessage(logs=pb.LogBatch(run_id=a.assignment.run_id, attempt=a.assignment.attempt,
                                                           records=[record])))

    async def _release(self, a: _Attempt) -> None:
        """Make sure nothing of the attempt is left running and remove its directory; never raises.

        Its uid and its environment are given back only when both worked: a uid whose processes or files may
        remain stays taken, and an environment such processes may use is never evicted.
        """
        self._forget_token(a)
        if self._sampler is not None:
            self._sampler.forget(*a.key)
        process = a.process
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("release the process tree", lambda: process.release() if process is not None else asyncio.sleep(0)),
            ("remove the container", lambda: _remove_container(a.container_removal)),
            ("forget the process group", lambda: asyncio.to_thread(a.dirs.pgid.unlink, missing_ok=True)),
            ("remove the attempt's directory", lambda: asyncio.to_thread(remove_tree, a.dirs.top)),
        ]
        clean = True
        for what, step in steps:
            try:
                await step()
            except Exception:
                clean = False
                log.exception("run cleanup failed", extra={**a.fields, "step": what})
        if clean:
            if a.lease is not None:
                a.lease.release()           # nothing of the run is left that could use its environment
            self._users.give_back(a.key)
        elif a.user is not None and a.user.switches:
            log.error("uid stays taken until the agent restarts", extra={**a.fields, "uid": a.user.uid})


_STORE_START_S = 60.0      # importing torch on a busy node


def _process_ranks(spec: pb.RunSpec, launches: list[ranks.Launch]) -> list[int]:
    """The global ranks of a distributed run's processes on this node: those the agent starts, or those a
    launcher (`torchrun`) it starts will start; none for a run of one process."""
    if len(launches) == 1 and ranks.is_launcher(spec.argv):
        first = launches[0].rank
        return list(range(first, first + max(1, spec.distribution.process_count_per_instance)))
    return [launch.rank for launch in launches]


def _free_port() -> int:
    """A TCP port free on this node now: a one-node distributed run's MASTER_PORT (a gang's is the head's)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


async def _remove_container(argv: list[str] | None) -> None:
    """Make sure a run's container is gone: its processes live under the runtime, not in the run's tree."""
    if not argv:
        return
    process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(_CONTAINER_REMOVAL_TIMEOUT_S):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise


def _write_hostfile(path: str, text: str) -> None:
    """An MPI run's hostfile, readable by the run's user (it lists addresses only)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o644)


async def _failed_rank(process: RunProcess, code: int) -> int | None:
    """The global rank whose exit code a distributed run's failure is (the lowest of several with that code): every
    process has ended by then, so waiting for each again returns at once."""
    if code == 0 or not isinstance(process, ranks.Ranks):
        return None
    for rank, each in sorted(process.processes, key=lambda found: found[0]):
        if await each.wait() == code:
            return rank
    return None
