"""The Runyard gRPC service: what `runyard` (the CLI) calls. Every call is authenticated and authorized by role
(auth.py) and scoped to the caller's workspace: another workspace's run is NOT_FOUND, exactly like a missing one,
and a snapshot is usable only by the workspaces that uploaded it. A run id in any request may be a unique prefix
of one (at least 4 characters, as git): `_run` resolves it within the caller's workspace, and an ambiguous one is
INVALID_ARGUMENT naming the candidates. The admin methods live in `admin_api.py`; the log search of
`SearchLogs` in `logsearch.py`.

Must not: place runs (dispatch) or interpret agent reports (agent_api).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Mapping

import grpc

from protos import runyard_pb2 as pb
from protos import runyard_pb2_grpc as pb_grpc
from runyard import priorities
from runyard.errors import SnapshotInvalid
from runyard.units import plural
from scheduler.agent_api import receive_blob
from scheduler.artifacts import ArtifactStore
from scheduler.admin_api import AdminMethods
from scheduler.env_api import EnvironmentMethods
from scheduler.auth import Credentials, audit_entry, caller
from scheduler.autoscale import ClusterPolicy
from scheduler.config import HeadConfig
from scheduler.convert import (
    ShownRuns, event_to_pb, from_pb, known_distribution, log_chunk_to_pb, log_to_pb, node_to_pb, run_to_pb, runs_response, series_to_pb,
    spec_from_pb,
)
from scheduler.dispatch import Dispatcher
from scheduler.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, shown
from scheduler.followers import Followers, wait_changed
from scheduler.core import gangs
from scheduler.core.heartbeats import Timers
from scheduler.core.lifecycle import ACTIVE, TERMINAL, RunState
from scheduler.core.nodes import InvalidNodeTransition, NodeState, ScheduleTrigger
from scheduler.core.react import Cancel
from scheduler.model import Distribution, NewRun, NodeRecord, RunEventRecord, RunRecord, RunSpec
from scheduler.placement import NodeView, Request, minor_versions, never_fits
from scheduler.reactor import Reactor
from scheduler.sessions import Sessions
from scheduler.enrollment import Enrollment
from scheduler.snapshot_check import SnapshotChecks
from scheduler.store import RunQuery, Store, UsagePoint
from scheduler import logsearch
from scheduler.tls import HeadTLS

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEDULES = {pb.NodeScheduleRequest.CORDON: ScheduleTrigger.CORDON, pb.NodeScheduleRequest.DRAIN: ScheduleTrigger.DRAIN,
              pb.NodeScheduleRequest.UNCORDON: ScheduleTrigger.UNCORDON}
LOG_PAGE = 1000
LIST_PAGE_BYTES = 4 * 1024 * 1024   # a page of runs stays far below any message limit, whatever each run holds
# Caps on what one caller may store: one user's input never breaks another's reads (a ListRuns page included).
MAX_ID_CHARS = 128
ENV_MAX_BYTES = 64 * 1024
MAP_MAX_ENTRIES = 100
MAP_KEY_CHARS = 256
MAP_VALUE_CHARS = 4096
MAP_MAX_BYTES = 64 * 1024
# A snapshot seen in the artifact store is taken as present for this long without asking the store again.
# Snapshots are content-addressed and never deleted by the head; the limit only bounds how long an object removed
# behind the head's back (a bucket's lifecycle rule) would still be accepted.
SNAPSHOT_SEEN_S = 60.0
FOLLOW_POLL_S = 1.0
MAX_SEARCH_RUNS = 100           # runs one SearchLogs call may name
MAX_SEARCH_MATCHES = 10_000     # matches one SearchLogs call may ask for


def request_of(spec: RunSpec, run_id: str = "", workspace: str = "") -> Request:
    return Request(run_id, spec.compute, spec.cpus, spec.memory_bytes, spec.gpus, spec.instance_count, workspace,
                   spec.gpu_model, spec.gpu_memory_bytes, tuple(sorted(spec.node_labels.items())), spec.timeout_s,
                   spec.env_hash, spec.env.python, bool(spec.env.conda), bool(spec.env.image))


def check_map(what: str, entries: Mapping[str, str]) -> None:
    """Refuse tags or properties over their caps: count, key and value lengths, and total size."""
    if len(entries) > MAP_MAX_ENTRIES:
        raise InvalidArgument(f"{what}: {len(entries)} entries, over the limit of {MAP_MAX_ENTRIES}")
    for key, value in entries.items():
        if not key or len(key) > MAP_KEY_CHARS or len(value) > MAP_VALUE_CHARS:
            raise InvalidArgument(f"{what}: {shown(key)} must have a key of 1 to {MAP_KEY_CHARS} characters and a "
                                  f"value of at most {MAP_VALUE_CHARS:,}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in entries.items())
    if size > MAP_MAX_BYTES:
        raise InvalidArgument(f"{what}: {size:,} bytes in all, over the limit of {MAP_MAX_BYTES:,}")


def validate_spec(spec: RunSpec) -> None:
    """Refuse a run spec the head would never run as it is."""
    if not spec.argv or not spec.argv[0]:
        raise InvalidArgument("the run has no command")
    if sum(len(a) for a in spec.argv) > 128 * 1024:
        raise InvalidArgument("the command is over 128 KiB; put it in a script in the snapshot")
    for key in spec.environment:
        if not _ENV_KEY.match(key):
            raise InvalidArgument(f"environment variable name {shown(key)} is not valid")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in spec.environment.items())
    if size > ENV_MAX_BYTES:
        raise InvalidArgument(f"the run's environment is {size:,} bytes, over the limit of {ENV_MAX_BYTES:,}; "
                              "put large values in a file in the snapshot")
    if not (0 < spec.cpus <= 4096):
        raise InvalidArgument(f"cpus must be in (0, 4096], not {spec.cpus:g}")
    if not (0 < spec.memory_bytes <= 64 * 1024**4):
        raise InvalidArgument("memory must be between 1 byte and 64 TiB")
    if not (0 <= spec.gpus <= 64):
        raise InvalidArgument(f"gpus must be in [0, 64], not {spec.gpus}")
    if not (1 <= spec.instance_count <= 1024):
        raise InvalidArgument(f"instance_count must be in [1, 1024], not {spec.instance_count}")
    if not (1 <= spec.procs_per_node <= 256):
        raise InvalidArgument(f"process_count_per_instance must be in [1, 256], not {spec.procs_per_node}")
    if spec.distribution is Distribution.TENSORFLOW:
        if not (1 <= spec.workers <= 4096 and 0 <= spec.parameter_servers <= 4096):
            raise InvalidArgument(f"a tensorflow run needs worker_count in [1, 4096] and parameter_server_count in "
                                  f"[0, 4096], not {spec.workers} and {spec.parameter_servers}")
        if (spec.instance_count - 1) * spec.procs_per_node >= spec.workers + spec.parameter_servers:
            raise InvalidArgument(f"{spec.workers + spec.parameter_servers} tensorflow processes leave a node of "
                                  f"{spec.instance_count} without any; use fewer nodes")
    if spec.gpus and spec.procs_per_node > spec.gpus:
        if spec.distribution is Distribution.TENSORFLOW:
            raise InvalidArgument(f"{spec.workers + spec.parameter_servers} tensorflow processes on "
                                  f"{plural(spec.instance_count, 'node')} put {spec.procs_per_node} on a node, more than the "
                                  f"{spec.gpus} GPUs per node it requests; ask for gpus: {spec.procs_per_node} or "
                                  "more nodes")
        raise InvalidArgument(f"process_count_per_instance {spec.procs_per_node} is more than the {spec.gpus} GPUs "
                              f"per node it requests; ask for gpus: {spec.procs_per_node} or fewer processes")
    if (spec.gpu_model or spec.gpu_memory_bytes) and not spec.gpus:
        raise InvalidArgument("gpu_model and gpu_memory need gpus of at least 1")
    if len(spec.gpu_model) > 128 or spec.gpu_memory_bytes < 0:
        raise InvalidArgument("gpu_model must be at most 128 characters and gpu_memory not negative")
    if len(spec.node_labels) > 32 or any(not _NAME.match(k) or len(v) > 256 for k, v in spec.node_labels.items()):
        raise InvalidArgument("node_labels: at most 32, names of letters, digits, '_', '-' or '.', values up to 256")
    if not (-1 <= spec.max_retries <= 100):
        raise InvalidArgument(f"retry.max_retries must be in [0, 100], not {spec.max_retries}")
    if not (0 <= spec.timeout_s <= 366 * 86400) or math.isnan(spec.timeout_s):
        raise InvalidArgument("timeout must be between 0 (none) and 366 days")
    if not _NAME.match(spec.compute):
        raise InvalidArgument(f"compute cluster name {spec.compute!r} is not valid")


class RunyardService(AdminMethods, EnvironmentMethods, pb_grpc.RunyardServicer):
    def __init__(
        self, *, config: HeadConfig, store: Store, artifacts: ArtifactStore, sessions: Sessions,
        dispatcher: Dispatcher, followers: Followers, timers: Timers, reactor: Reactor,
        credentials: Credentials, enrollment: Enrollment, tls: HeadTLS, snapshot_checks: SnapshotChecks,
        policies: Mapping[str, ClusterPolicy] | None = None,
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._enrollment = enrollment
        self._tls = tls
        self._snapshot_checks = snapshot_checks
        self._reactor = reactor
        self._policies = dict(policies or {})
        self._timers = timers
        self._store = store
        self._artifacts = artifacts
        self._sessions = sessions
        self._dispatcher = dispatcher
        self._followers = followers
        self._snapshots_seen: dict[tuple[str, str], float] = {}  # (sha256, workspace) -> when last seen present
        self._shown_runs = ShownRuns(store.run_from_row)

    async def _run(self, run_id: str) -> RunRecord:
        """The caller's run with this id, or with this unique id prefix."""
        if len(run_id) > MAX_ID_CHARS:
            raise NotFound(f"no run {shown(run_id)}")
        return await self._store.find_run(run_id, caller().workspace)

    async def _node_names(self) -> dict[str, str]:
        return {n.id: n.name for n in await self._store.list_nodes()}

    async def HasSnapshot(self, request: pb.SnapshotRef, context: grpc.aio.ServicerContext) -> pb.HasSnapshotResponse:
        """Present only when the caller's workspace uploaded it: knowing a sha256 is not enough to use one."""
        return pb.HasSnapshotResponse(present=await self._snapshot_present(request.sha256))

    async def UploadSnapshot(self, request_iterator: AsyncIterator[pb.SnapshotChunk], context: grpc.aio.ServicerContext) -> pb.UploadSnapshotResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise InvalidArgument("empty snapshot upload")
        if await self._snapshot_present(first.sha256):
            return pb.UploadSnapshotResponse(sha256=first.sha256, existed=True)
        # Stored for another workspace or not at all: this caller proves it has the bytes by sending them all.
        path = await receive_blob(
            first.data, (c.data async for c in request_iterator), first.sha256,
            tmp_dir=self._config.data_path / "tmp", max_bytes=self._config.snapshot_max_bytes,
        )
        if await asyncio.to_thread(self._artifacts.exists, "snapshots", first.sha256):
            path.unlink(missing_ok=True)       # the same bytes, checked when they were first stored
            await self._store.grant_snapshot(first.sha256, caller().workspace)
            return pb.UploadSnapshotResponse(sha256=first.sha256, existed=True)
        try:
            await self._snapshot_checks.check(path)
        except SnapshotInvalid as err:
            path.unlink(missing_ok=True)
            raise InvalidArgument(str(err)) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        existed = not await asyncio.to_thread(self._artifacts.put, "snapshots", first.sha256, path)
        await self._store.grant_snapshot(first.sha256, caller().workspace)
        log.info("snapshot stored", extra={"sha256": first.sha256, "existed": existed})
        return pb.UploadSnapshotResponse(sha256=first.sha256, existed=existed)

    async def Submit(self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext) -> pb.SubmitResponse:
        workspace = caller().workspace
        if not known_distribution(request.spec):
            raise InvalidArgument(f"distribution type {request.spec.distribution.type!r} is not supported; "
                                  "only pytorch, mpi or tensorflow")
        spec = spec_from_pb(request.spec)
        validate_spec(spec)
        experiment = request.experiment or "default"
        if not _NAME.match(experiment):
            raise InvalidArgument(f"experiment name {experiment!r} must be letters, digits, '_', '-' or '.'")
        priority = request.priority or priorities.MEDIUM
        if priority not in priorities.BY_NAME.values() and not caller().is_admin:
            raise PermissionDenied("only admins may give an integer priority; use low, medium or high")
        if abs(priority) > priorities.LIMIT:
            raise InvalidArgument(f"priority must be within +-{priorities.LIMIT:,}")
        if len(request.display_name) > 256:
            raise InvalidArgument("the display name is over 256 characters")
        for what, entries in (("tags", request.tags), ("properties", request.properties)):
            check_map(what, entries)
        for what, value in (("idempotency key", request.idempotency_key), ("parent run id", request.parent_run_id)):
            if len(value) > MAX_ID_CHARS:
                raise InvalidArgument(f"the {what} is over {MAX_ID_CHARS} characters")
        if not await self._snapshot_present(request.snapshot_sha256):
            raise FailedPrecondition("the run's snapshot was not uploaded; upload it first")
        parent_id = (await self._run(request.parent_run_id)).id if request.parent_run_id else ""
        spec, env_name, env_version = await self.run_environment(spec, request.spec.env_ref)
        await self._refuse_if_it_never_fits(spec)
        run_id, existed = await self._store.create_run(
            NewRun(
                workspace=workspace, experiment=experiment, display_name=request.display_name, tags=dict(request.tags),
                properties=dict(request.properties), snapshot_sha256=request.snapshot_sha256, spec=spec,
                idempotency_key=request.idempotency_key, parent_id=parent_id,
                priority=priority, submitter=caller().user, env_name=env_name, env_version=env_version,
            ),
            audit=audit_entry("Submit", context, self._store.clock()),
        )
        if not existed:
            log.info("run submitted", extra={"run_id": run_id, "workspace": workspace, "experiment": experiment})
            self._dispatcher.queue_grew()
        return pb.SubmitResponse(run_id=run_id, existed=existed)

    async def _snapshot_present(self, sha256: str) -> bool:
        """Whether the caller's workspace may use the snapshot and it is in the artifact store; a recent positive
        answer is remembered (SNAPSHOT_SEEN_S)."""
        if not _SHA256.match(sha256):
            return False
        key, now = (sha256, caller().workspace), time.monotonic()
        seen = self._snapshots_seen.get(key)
        if seen is not None and now - seen < SNAPSHOT_SEEN_S:
            return True
        if not await self._store.snapshot_visible(*key):
            return False
        if not await asyncio.to_thread(self._artifacts.exists, "snapshots", sha256):
            return False
        if len(self._snapshots_seen) >= 10_000:
            self._snapshots_seen.clear()
        self._snapshots_seen[key] = now
        return True

    async def _refuse_if_it_never_fits(self, spec: RunSpec) -> None:
        """Refuse a run for a cluster that does not exist (no node of it ever joined, whatever its state now, and no
        `[clusters.NAME]` in head.toml), or that no node of its cluster could ever hold, counting the nodes the
        autoscaler may add; with no node of a configured cluster known yet, let it queue. What an environment needs
        (a python, a conda builder, a container runtime) is judged by the nodes known: the nodes the autoscaler may
        add are taken to have what those have, and anything when none is known."""
        known = await self._store.list_nodes()
        configured = set(self._policies) | set(self._config.clusters)
        if spec.compute not in configured and not any(n.cluster == spec.compute for n in known):
            clusters = sorted({n.cluster for n in known} | configured)
            raise FailedPrecondition(
                f"no cluster {spec.compute!r}: no node has joined it and head.toml configures no autoscaler for it "
                f"(clusters: {', '.join(clusters) or 'none yet; start an agent, or add [clusters.NAME] to head.toml'})"
            )
        nodes = [
            NodeView(id=n.id, name=n.name, cluster=n.cluster, cpus_free=n.capacity.cpus, memory_free=n.capacity.memory_bytes,
                     gpus_free=tuple(g.index for g in n.capacity.gpus), cpus_total=n.capacity.cpus,
                     memory_total=n.capacity.memory_bytes, gpus_total=len(n.capacity.gpus), labels=n.labels,
                     gpu_specs=tuple((g.index, g.model, g.memory_bytes) for g in n.capacity.gpus),
                     pythons=minor_versions(n.capacity.interpreters), builders=frozenset(n.capacity.builders))
            for n in known if n.cluster == spec.compute and n.state is not NodeState.DOWN
        ]
        pythons = frozenset().union(*(n.pythons or () for n in nodes)) if nodes else None
        builders = frozenset().union(*(n.builders or () for n in nodes)) if nodes else None
        policy = self._policies.get(spec.compute)
        if policy is not None and policy.node_cpus and policy.max_nodes > len(nodes):
            nodes += [
                NodeView(id=f"autoscaled-{i}", name=f"a node the autoscaler may add to {spec.compute}", cluster=spec.compute,
                         cpus_free=policy.node_cpus, memory_free=policy.node_memory_bytes, gpus_free=tuple(range(policy.node_gpus)),
                         cpus_total=policy.node_cpus, memory_total=policy.node_memory_bytes, gpus_total=policy.node_gpus,
                         pythons=pythons, builders=builders)
                for i in range(policy.max_nodes - len(nodes))
            ]
        never = never_fits(request_of(spec), nodes)
        if never:
            raise FailedPrecondition(never)

    async def GetRun(self, request: pb.RunRef, context: grpc.aio.ServicerContext) -> pb.Run:
        run = await self._run(request.run_id)
        shown = run_to_pb(
            run, node_name=(await self._node_names()).get(run.node_id, ""),
            events=await self._store.run_events(run.id), params=await self._store.params(run.id),
        )
        for summary in await self._store.usage_summaries(run.id):
            shown.usage.add(key=summary.key, peak=summary.peak, mean=summary.mean, count=summary.count)
        return shown

    async def GetUsage(self, request: pb.UsageRequest, context: grpc.aio.ServicerContext) -> pb.UsageResponse:
        """CPU- and GPU-hours by workspace and user (`store.usage_report`): the caller's workspace; an admin's,
        any workspace or every one ("*")."""
        if request.since < 0 or request.until < 0 or (request.until and request.until <= request.since):
            raise InvalidArgument("the usage window must have since < until (unix seconds; 0: unbounded)")
        who = caller()
        workspace: str | None = request.workspace or who.workspace
        if workspace != who.workspace and not who.is_admin:
            raise PermissionDenied("only an admin may read the usage of another workspace than the token's own")
        if workspace == "*":
            workspace = None
        now = self._store.clock()
        until = request.until or now
        rows = await self._store.usage_report(since=request.since, until=until, now=now, workspace=workspace)
        return pb.UsageResponse(since=request.since, until=until, rows=[
            pb.UsageRow(workspace=r.workspace, user=r.user, runs=r.runs, cpu_hours=r.cpu_hours,
                        cpu_hours_allocated=r.cpu_hours_allocated, gpu_hours=r.gpu_hours) for r in rows])

    async def ListRuns(self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext) -> pb.ListRunsResponse:
        rows = await self._store.list_run_rows(caller().workspace, await self._run_query(request))
        names = await self._node_names()
        shown, size, truncated = [], 0, False
        for row in rows:
            run = self._shown_runs.serialized(row, names.get(self._store.node_of_row(row), ""))
            size += len(run)
            if size > LIST_PAGE_BYTES:
                truncated = True
                break
            shown.append(run)
        return runs_response(shown, truncated)

    async def _run_query(self, request: pb.ListRunsRequest) -> RunQuery:
        """The filters of a ListRuns request as the store takes them; InvalidArgument for one that can hold for no
        run by its form (an unknown state, an empty tag key, a bound that is not a time)."""
        states = []
        for value in [*([request.state] if request.state else []), *request.states]:
            try:
                state = from_pb(RunState, value)
            except ValueError:
                raise InvalidArgument(f"unknown run state {value}; one of {', '.join(RunState)}") from None
            if state is None:
                raise InvalidArgument(f"give a run state, one of {', '.join(RunState)}")
            states.append(str(state))
        if len(request.tags) > MAP_MAX_ENTRIES:
            raise InvalidArgument(f"at most {MAP_MAX_ENTRIES} tag filters")
        for tag in request.tags:
            if not tag.key or len(tag.key) > MAP_KEY_CHARS or len(tag.value) > MAP_VALUE_CHARS:
                raise InvalidArgument(f"tag filter {shown(tag.key)}: a key of 1 to {MAP_KEY_CHARS} characters and "
                                      f"a value of at most {MAP_VALUE_CHARS:,}")
        for what, bound in (("created_after", request.created_after), ("created_before", request.created_before)):
            if not math.isfinite(bound) or bound < 0:
                raise InvalidArgument(f"{what} must be a time in unix seconds, not {bound}")
        for what, text in (("experiment", request.experiment), ("user", request.user),
                           ("compute", request.compute), ("node", request.node)):
            if len(text) > MAP_KEY_CHARS:
                raise InvalidArgument(f"the {what} filter is over {MAP_KEY_CHARS} characters")
        node_id = ""
        if request.node:
            node = next((n for n in await self._store.list_nodes() if n.name == request.node), None)
            if node is None:
                raise NotFound(f"no node {shown(request.node)}; `runyard nodes` lists them")
            node_id = node.id
        return RunQuery(
            experiment=request.experiment, states=tuple(dict.fromkeys(states)), user=request.user,
            tags=tuple((t.key, None if t.any_value else t.value) for t in request.tags),
            created_after=request.created_after, created_before=request.created_before,
            parent_id=(await self._run(request.parent_run_id)).id if request.parent_run_id else "",
            compute=request.compute, node_id=node_id, limit=min(request.limit or 50, 10_000),
        )

    async def ListExperiments(self, request: pb.ListExperimentsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListExperimentsResponse:
        rows = await self._store.experiments(caller().workspace)
        return pb.ListExperimentsResponse(experiments=[pb.Experiment(
            name=r.name, queued=r.queued, running=r.running, completed=r.completed, failed=r.failed,
            canceled=r.canceled, total=r.total, last_activity=r.last_activity) for r in rows])

    async def SearchLogs(self, request: pb.SearchLogsRequest, context: grpc.aio.ServicerContext) -> pb.SearchLogsResponse:
        if not request.run_ids:
            raise InvalidArgument("name at least one run to search")
        if len(request.run_ids) > MAX_SEARCH_RUNS:
            raise InvalidArgument(f"{len(request.run_ids)} runs; one search takes at most {MAX_SEARCH_RUNS}")
        if request.stream not in pb.Stream.values():
            raise InvalidArgument(f"unknown log stream {request.stream}")
        if not (0 <= request.max_matches <= MAX_SEARCH_MATCHES):
            raise InvalidArgument(f"max_matches must be in [0, {MAX_SEARCH_MATCHES:,}]")
        pattern = logsearch.compile_pattern(request.pattern, request.ignore_case)
        sources = []
        for run_id in request.run_ids:
            run = await self._run(run_id)
            log_ids, ranks = await self._sources(run, None)
            sources.append(logsearch.Source(run.id, tuple(log_ids), ranks, ranked=gangs.is_gang_parent(run)
                                            or run.spec.distribution is not Distribution.NONE))
        limits = logsearch.Limits(matches=request.max_matches or logsearch.DEFAULT_MATCHES)
        found = await logsearch.search(self._store, sources, pattern, stream=int(request.stream) or None,
                                       limits=limits)
        return pb.SearchLogsResponse(scanned=found.scanned, stopped=found.stopped, matches=[pb.LogMatch(
            run_id=m.run_id, attempt=m.attempt, rank=m.rank, ranked=m.ranked, stream=m.stream,  # type: ignore[arg-type]
            ts=m.ts, line=m.line) for m in found.matches])

    async def ListQueue(self, request: pb.QueueRequest, context: grpc.aio.ServicerContext) -> pb.QueueResponse:
        workspace = caller().workspace
        order = [r.id for r in await self._dispatcher.ordered_queue()
                 if r.workspace == workspace and (not request.compute or r.compute == request.compute)]
        records = {r.id: r for r in await self._store.runs_in({RunState.QUEUED})}
        runs = [run_to_pb(records[run_id]) for run_id in order if run_id in records]
        events = await self._store.events(cluster=request.compute, limit=10)
        return pb.QueueResponse(runs=runs, events=[event_to_pb(e) for e in events])

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext) -> pb.CancelResponse:
        runs = [await self._run(run_id) for run_id in request.run_ids]
        result = []
        for run in runs:
            await self._reactor.handle(Cancel(run.id))
            run = await self._store.get_run(run.id)
            log.info("cancel requested", extra={"run_id": run.id, "state": run.state})
            self._followers.notify(run.id)
            result.append(run_to_pb(run))
        return pb.CancelResponse(runs=result)

    async def StreamLogs(self, request: pb.LogsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LogsResponse]:
        run = await self._run(request.run_id)
        distributed = run.spec.distribution is not Distribution.NONE
        rank = request.rank if request.has_rank else (0 if distributed and not request.all_ranks else None)
        if request.stream not in pb.Stream.values():
            raise InvalidArgument(f"unknown log stream {request.stream}")
        stream = int(request.stream) or None
        with self._followers.follow(run.id) as changed:
            sources, ranks = await self._sources(run, rank)
            after = (await self._store.tail_start(sources, request.tail, rank, stream)
                     if request.tail > 0 and sources else 0)
            ended = False
            while True:
                changed.clear()
                if gangs.is_gang_parent(run):   # children appear once the gang is placed, anew for each attempt
                    sources, ranks = await self._sources(run, rank)
                page = await self._log_page(request.packed, sources, ranks, after, rank, stream)
                if page is not None:
                    after, response = page
                    yield response
                    continue
                if not request.follow or ended:
                    return
                # Logs of an attempt are committed before its end is: one more read after the end sees them all.
                ended = (await self._store.get_run(run.id)).state in TERMINAL
                if not ended:
                    await wait_changed(changed, FOLLOW_POLL_S)

    async def _log_page(self, packed: bool, sources: list[str], ranks: dict[str, int], after: int,
                        rank: int | None, stream: int | None) -> tuple[int, pb.LogsResponse] | None:
        """The next page of log records after `after` (the cursor then, and the answer), or None if none yet:
        as stored chunks when the client takes them (`packed`), else one message per record."""
        if not sources:
            return None
        only = None if ranks else rank
        if packed:
            chunks = await self._store.read_log_chunks(sources, after_id=after, limit=LOG_PAGE, rank=only,
                                                      stream=stream)
            if not chunks:
                return None
            return chunks[-1].last_id, pb.LogsResponse(chunks=[log_chunk_to_pb(c, rank=ranks.get(c.run_id))
                                                               for c in chunks])
        rows = await self._store.read_logs(sources, after_id=after, limit=LOG_PAGE, rank=only, stream=stream)
        if not rows:
            return None
        return rows[-1].id, pb.LogsResponse(lines=[log_to_pb(r, rank=ranks.get(r.run_id)) for r in rows])

    async def _sources(self, run: RunRecord, rank: int | None) -> tuple[list[str], dict[str, int]]:
        """The runs whose logs or metrics `logs RUN` and `metrics RUN` show: the run itself, or a multi-node run's
        children (child id -> rank). A distributed run's records carry their process's global rank: its children
        are read without a rank of their own (an empty mapping), so that `rank` picks records."""
        if not gangs.is_gang_parent(run):
            return [run.id], {}
        if run.spec.distribution is not Distribution.NONE:
            return [c.id for c in await self._store.children(run.id)], {}
        ranks = {c.id: gangs.node_rank(c) for c in await self._store.children(run.id)}
        if rank is not None:
            ranks = {child: r for child, r in ranks.items() if r == rank}
        return list(ranks), ranks

    async def GetMetrics(self, request: pb.MetricsRequest, context: grpc.aio.ServicerContext) -> pb.MetricsResponse:
        if request.max_points < 0:
            raise InvalidArgument("max points must be 1 or more (0: every point)")
        run = await self._run(request.run_id)
        if request.system:
            return await self._system_metrics(run.id, request.key)
        # a multi-node run shows rank 0's by default, as `logs` does
        rank = request.rank if request.has_rank else (0 if gangs.is_gang_parent(run) and not request.all_ranks
                                                      else None)
        sources, ranks = await self._sources(run, rank)
        params: dict[str, str] = {}
        for source in sources:
            params.update(await self._store.params(source))
        response = pb.MetricsResponse(params=params)
        row_rank = None if ranks else rank
        if request.summaries_only:     # aggregated in SQL: no point is read
            summaries = await self._store.metric_summaries(sources, request.key, row_rank) if sources else []
        else:                          # each series read once; its summary comes from its columns
            summaries = []
            names = await self._store.metric_series_names(sources, request.key, row_rank) if sources else []
            for run_id, key, series_rank in sorted(names, key=lambda n: (n[1], ranks.get(n[0], n[2]), n[0])):
                found = await self._store.metric_series(run_id, key, series_rank, max_points=request.max_points)
                series_to_pb(found, ranks.get(run_id, series_rank), response, packed=request.packed)
                summaries.append(found.summary())
        for summary in sorted(summaries, key=lambda s: (s.key, ranks.get(s.run_id, s.rank), s.run_id)):
            response.summaries.add(key=summary.key, rank=ranks.get(summary.run_id, summary.rank), last=summary.last,
                                   min=summary.min, max=summary.max, count=summary.count,
                                   last_step=summary.last_step)
        return response

    async def _system_metrics(self, run_id: str, key: str) -> pb.MetricsResponse:
        """The agent's samples of the run's use (`system/...` keys), every attempt's, one series per key (a point's
        step is its sample's number within its attempt), with its summary."""
        response = pb.MetricsResponse()
        by_key: dict[str, list[UsagePoint]] = {}
        for point in await self._store.usage_points(run_id, key):
            by_key.setdefault(point.key, []).append(point)
        for name, points in by_key.items():
            values = [p.value for p in points]
            response.series.add(key=name, steps=[p.seq for p in points], values=values, ts=[p.ts for p in points],
                                total=len(points))
            response.summaries.add(key=name, last=values[-1], min=min(values), max=max(values), count=len(values),
                                   last_step=points[-1].seq)
        return response

    async def ListNodes(self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext) -> pb.ListNodesResponse:
        by_node = await self._runs_by_node()
        nodes = [self._node_to_pb(node, by_node.get(node.id, [])) for node in await self._store.list_nodes()]
        events = await self._store.events(limit=10)
        return pb.ListNodesResponse(nodes=nodes, events=[event_to_pb(e) for e in events])

    async def GetNode(self, request: pb.NodeRef, context: grpc.aio.ServicerContext) -> pb.Node:
        return await self._node_pb(request.node)

    async def _node_pb(self, name: str) -> pb.Node:
        node = next((n for n in await self._store.list_nodes() if n.name == name), None)
        if node is None:
            raise NotFound(f"no node {shown(name)}; `runyard nodes` lists them")
        mine = (await self._runs_by_node()).get(node.id, [])
        found = self._node_to_pb(node, mine, events=await self._store.node_events(node.id))
        session = self._sessions.get(node.id)
        if session is not None:     # one node's built environments; ListNodes leaves them out, they can be many
            found.capacity.env_hashes.extend(sorted(session.env_hashes))
        return found

    async def _runs_by_node(self) -> dict[str, list[RunRecord]]:
        by_node: dict[str, list[RunRecord]] = {}
        for run in await self._store.runs_in(ACTIVE):
            by_node.setdefault(run.node_id, []).append(run)
        return by_node

    def _node_to_pb(self, node: NodeRecord, mine: list[RunRecord], events: list[RunEventRecord] | None = None) -> pb.Node:
        facts = self._sessions.facts(node.id)
        state = facts.state if facts is not None else node.state
        allocated = (sum(r.spec.cpus for r in mine), sum(r.spec.memory_bytes for r in mine), sum(r.spec.gpus for r in mine))
        shown = node_to_pb(node, state=state, allocated=allocated, running=[r.id for r in mine], events=events)
        shown.last_seen = self._sessions.last_heard().get(node.id, node.last_seen)
        return shown

    async def SetNodeSchedule(self, request: pb.NodeScheduleRequest, context: grpc.aio.ServicerContext) -> pb.Node:
        trigger = _SCHEDULES.get(request.action)
        if trigger is None:
            raise InvalidArgument("say cordon, drain or uncordon")
        try:
            node = await self._store.set_node_schedule(request.node, trigger, f"{trigger} by an admin")
        except InvalidNodeTransition as err:
            node = next(n for n in await self._store.list_nodes() if n.name == request.node)
            log.info("node schedule unchanged", extra={"node": node.name, "why": str(err)})
        else:
            self._sessions.set_schedule(node.id, node.schedule, node.failures_in_row)
            log.info("node schedule changed", extra={"node": node.name, "schedule": node.schedule})
        self._dispatcher.wake()
        return self._node_to_pb(node, (await self._runs_by_node()).get(node.id, []))

    async def Download(self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DataChunk]:
        run = await self._run(request.run_id)
        if request.what == pb.DownloadRequest.OUTPUTS:
            kind, sha = "outputs", run.outputs_sha256
            if not sha:
                raise NotFound(f"run {run.id} has no outputs" + ("" if run.state in TERMINAL else " yet"))
        else:
            kind, sha = "snapshots", run.snapshot_sha256
        async for chunk, size in self._artifacts.stream(kind, sha):
            yield pb.DataChunk(data=chunk, size=size)


__all__ = ["RunyardService", "validate_spec"]
