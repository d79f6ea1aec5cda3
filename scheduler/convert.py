"""Conversions between protobuf messages and the head's domain values. The only module that knows both; it also keeps
listed runs serialized (`ShownRuns`) for `ListRuns`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any, TypeVar, overload

from protos import runyard_pb2 as pb
from runyard.envspec import EnvSpec
from runyard.envwire import env_from_pb, env_to_pb
from scheduler.core.lifecycle import DesiredState, PendingKind, Reason, RunState
from scheduler.core.nodes import NodeState, Schedule
from scheduler.core.react import Phase, Report
from scheduler.model import (
    AuditRecord, Capacity, ClusterEvent, Distribution, EnvironmentRecord, Gpu, LogRow, NodeRecord, Role, RunEventRecord, RunRecord,
    RunSpec, TokenRecord,
)
from scheduler.store.records import LogChunk, MetricSeries
from scheduler.sessions import Ack, Assign, BuildEnv, Outbound, StopAttempt

E = TypeVar("E", bound=StrEnum)
# Caps on what a node says of itself beyond its resources: more than this is dropped, never stored.
MAX_PLATFORM_CHARS = 64
MAX_INTERPRETERS = 32
MAX_BUILDERS = 16
MAX_NAME_CHARS = 32                 # an interpreter's version, a builder's name
MAX_ENV_HASHES = 10_000
# Each StrEnum of the vocabulary, its protobuf enum and the prefix of its value names (RunState.QUEUED is
# RUN_STATE_QUEUED); tests/test_vocabulary.py proves the two sides name the same members.
VOCABULARY: dict[type[StrEnum], tuple[Any, str]] = {
    RunState: (pb.RunState, "RUN_STATE_"),
    Reason: (pb.Reason, "REASON_"),
    DesiredState: (pb.DesiredState, "DESIRED_STATE_"),
    PendingKind: (pb.PendingKind, "PENDING_KIND_"),
    NodeState: (pb.NodeState, "NODE_STATE_"),
    Schedule: (pb.Schedule, "SCHEDULE_"),
    Role: (pb.Role, "ROLE_"),
}
_PHASES = {pb.RunUpdate.PREPARING: Phase.PREPARING, pb.RunUpdate.RUNNING: Phase.RUNNING,
           pb.RunUpdate.FINALIZING: Phase.FINALIZING, pb.RunUpdate.EXITED: Phase.EXITED}


# One overload per vocabulary enum: the generated stubs type `EnumTypeWrapper.Value()` as a plain int, while a
# message's enum field accepts only its own enum type; these say which protobuf enum each member becomes.
@overload
def to_pb(member: RunState) -> pb.RunState: ...
@overload
def to_pb(member: Reason | None) -> pb.Reason: ...
@overload
def to_pb(member: DesiredState) -> pb.DesiredState: ...
@overload
def to_pb(member: NodeState) -> pb.NodeState: ...
@overload
def to_pb(member: Schedule) -> pb.Schedule: ...
@overload
def to_pb(member: PendingKind) -> pb.PendingKind: ...
@overload
def to_pb(member: Role) -> pb.Role: ...
def to_pb(member: StrEnum | None) -> int:
    """The protobuf value of a vocabulary member; None (or '') is the unspecified value 0."""
    if not member:
        return 0
    pb_enum, prefix = VOCABULARY[type(member)]
    return int(pb_enum.Value(prefix + member.name))


def from_pb(kind: type[E], value: int) -> E | None:
    """The vocabulary member of a protobuf value; None for unspecified. Raises ValueError on an unknown value."""
    if not value:
        return None
    pb_enum, prefix = VOCABULARY[kind]
    return kind[pb_enum.Name(value).removeprefix(prefix)]


def reason_of(text: str) -> Reason | None:
    """A stored reason (text in the runs table) as the enum."""
    return Reason(text) if text else None


def report_from_pb(node_id: str, update: pb.RunUpdate) -> Report:
    phase = _PHASES.get(update.phase)
    if phase is None:
        raise ValueError(f"unknown run phase {update.phase}")
    return Report(node_id=node_id, run_id=update.run_id, attempt=update.attempt, phase=phase,
                  exit_code=update.exit_code, reason=from_pb(Reason, update.reason), detail=update.detail,
                  at=update.at, pid=update.pid, outputs_sha256=update.outputs_sha256)


def outbound_to_pb(message: Outbound) -> pb.HeadMessage:
    match message:
        case Ack(msg_seq=seq):
            return pb.HeadMessage(ack=pb.Ack(msg_seq=seq))
        case Assign(run=run):
            return pb.HeadMessage(assign=pb.Assignment(
                run_id=run.id, attempt=run.attempt, workspace=run.workspace, experiment=run.experiment,
                parent_run_id=run.parent_id, snapshot_sha256=run.snapshot_sha256, spec=spec_to_pb(run.spec),
                gpu_indices=run.gpu_indices))
        case StopAttempt(run_id=run_id, attempt=attempt, reason=reason):
            return pb.HeadMessage(cancel=pb.CancelRun(run_id=run_id, attempt=attempt, reason=to_pb(reason)))
        case BuildEnv(env=env, env_hash=env_hash):
            return pb.HeadMessage(build_env=pb.BuildEnvironment(env=env_to_pb(env), env_hash=env_hash))
    raise TypeError(f"no wire form for {message!r}")


def spec_from_pb(msg: pb.RunSpec) -> RunSpec:
    """A run spec as a client sent it; its environment's hash is the head's to set, never the client's. A
    distribution type the head does not know is `_check_spec`'s to refuse (`known_distribution`)."""
    res = msg.resources
    return RunSpec(
        argv=tuple(msg.argv),
        environment=dict(msg.environment),
        cpus=res.cpus or 1.0,
        memory_bytes=res.memory_bytes or 1024**3,
        gpus=res.gpus,
        instance_count=res.instance_count or 1,
        timeout_s=msg.timeout_s,
        compute=msg.compute or "default",
        gpu_model=res.gpu_model,
        gpu_memory_bytes=res.gpu_memory_bytes,
        node_labels=dict(res.node_labels),
        max_retries=msg.max_retries if msg.HasField("max_retries") else -1,
        env=env_from_pb(msg.env) if msg.HasField("env") else EnvSpec(),
        distribution=Distribution(msg.distribution.type) if msg.distribution.type in set(Distribution)
        else Distribution.NONE,
        procs_per_node=tensorflow_procs_per_node(msg) if msg.distribution.type == Distribution.TENSORFLOW
        else max(1, msg.distribution.process_count_per_instance),
        workers=msg.distribution.worker_count,
        parameter_servers=msg.distribution.parameter_server_count,
    )


def tensorflow_procs_per_node(msg: pb.RunSpec) -> int:
    """A TensorFlow run's processes per node, as Azure ML spreads them: ceil((workers + parameter servers) / nodes)."""
    total, nodes = msg.distribution.worker_count + msg.distribution.parameter_server_count, \
        msg.resources.instance_count or 1
    return max(1, -(-total // nodes))


def known_distribution(msg: pb.RunSpec) -> bool:
    return msg.distribution.type in set(Distribution)


def spec_to_pb(spec: RunSpec) -> pb.RunSpec:
    return pb.RunSpec(
        argv=spec.argv,
        environment=spec.environment,
        resources=pb.Resources(
            cpus=spec.cpus, memory_bytes=spec.memory_bytes, gpus=spec.gpus, instance_count=spec.instance_count,
            gpu_model=spec.gpu_model, gpu_memory_bytes=spec.gpu_memory_bytes, node_labels=spec.node_labels,
        ),
        timeout_s=spec.timeout_s,
        compute=spec.compute,
        max_retries=None if spec.max_retries < 0 else spec.max_retries,
        env=None if spec.env.empty else env_to_pb(spec.env),
        env_hash=spec.env_hash,
        distribution=None if spec.distribution is Distribution.NONE else pb.Distribution(
            type=spec.distribution, process_count_per_instance=spec.procs_per_node, worker_count=spec.workers,
            parameter_server_count=spec.parameter_servers),
    )


def capacity_from_pb(msg: pb.Capacity) -> Capacity:
    """A node's capacity as it says it; its platform, interpreters and builders within their caps (the rest is
    dropped). Its built environments are `env_hashes_from_pb`'s."""
    return Capacity(
        cpus=msg.cpus,
        memory_bytes=msg.memory_bytes,
        disk_bytes=msg.disk_bytes,
        gpus=tuple(Gpu(g.index, g.uuid, g.model, g.memory_bytes) for g in msg.gpus),
        platform=msg.platform[:MAX_PLATFORM_CHARS],
        interpreters=_names(msg.interpreters, MAX_INTERPRETERS),
        builders=_names(msg.builders, MAX_BUILDERS),
        advertise_address=msg.advertise_address[:MAX_NAME_CHARS],
        rendezvous_port_min=msg.rendezvous_port_min or 29500,
        rendezvous_port_max=msg.rendezvous_port_max or 29999,
    )


def _names(values: Iterable[str], most: int) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if v and len(v) <= MAX_NAME_CHARS}))[:most]


def env_hashes_from_pb(values: Iterable[str]) -> frozenset[str]:
    """The environments a node says it has built: sha256 hex digests, at most MAX_ENV_HASHES of them."""
    return frozenset(v for v in list(values)[:MAX_ENV_HASHES] if len(v) == 64 and not v.strip("0123456789abcdef"))


def capacity_to_pb(cap: Capacity) -> pb.Capacity:
    return pb.Capacity(
        cpus=cap.cpus,
        memory_bytes=cap.memory_bytes,
        disk_bytes=cap.disk_bytes,
        gpus=[pb.GpuInfo(index=g.index, uuid=g.uuid, model=g.model, memory_bytes=g.memory_bytes) for g in cap.gpus],
        platform=cap.platform, interpreters=cap.interpreters, builders=cap.builders,
        advertise_address=cap.advertise_address, rendezvous_port_min=cap.rendezvous_port_min,
        rendezvous_port_max=cap.rendezvous_port_max,
    )


def run_to_pb(
    run: RunRecord,
    *,
    node_name: str = "",
    events: list[RunEventRecord] | None = None,
    params: dict[str, str] | None = None,
) -> pb.Run:
    msg = pb.Run(
        id=run.id,
        workspace=run.workspace,
        experiment=run.experiment,
        display_name=run.display_name,
        parent_run_id=run.parent_id,
        state=to_pb(run.state),
        reason=to_pb(reason_of(run.reason)),
        has_exit_code=run.exit_code is not None,
        exit_code=run.exit_code or 0,
        pending_reason=run.pending_reason,
        pending_kind=to_pb(run.pending_kind) if run.pending_kind else pb.PENDING_KIND_UNSPECIFIED,
        submitter=run.submitter,
        attempt=run.attempt,
        node=node_name,
        tags=run.tags,
        properties=run.properties,
        params=params or {},
        spec=spec_to_pb(run.spec),
        snapshot_sha256=run.snapshot_sha256,
        outputs_sha256=run.outputs_sha256,
        created_at=run.created_at,
        started_at=run.started_at or 0.0,
        ended_at=run.ended_at or 0.0,
        desired_state=to_pb(run.desired_state),
        priority=run.priority,
        env_name=run.env_name,
        env_version=run.env_version,
    )
    for event in events or ():
        msg.events.add(at=event.at, from_state=event.from_state, to_state=event.to_state, event=event.event, detail=event.detail)
    return msg


def series_to_pb(series: MetricSeries, rank: int, response: pb.MetricsResponse, *, packed: bool) -> None:
    """One series into `response` as the rank `rank`: as columns (`packed`), or one point per entry for the clients
    that predate them (a downsampled series gives its buckets' last points)."""
    if not packed:
        for step, value, ts in zip(series.steps, series.values, series.ts):
            response.points.add(key=series.key, value=value, step=step, ts=ts, rank=rank)
        return
    shown = response.series.add(key=series.key, rank=rank, total=series.total)
    shown.steps.extend(series.steps)
    shown.values.extend(series.values)
    shown.ts.extend(series.ts)
    if series.downsampled:
        shown.first_steps.extend(series.first_steps)
        shown.counts.extend(series.counts)
        shown.mins.extend(series.mins)
        shown.maxs.extend(series.maxs)


class ShownRuns:
    """`pb.Run`s of listed runs, serialized, kept per run while its row (and node name) stays the same: a listing
    of 10,000 runs decodes and converts only the runs that changed since the last listing. A run is known again by
    the hash of its row and node name (a stale entry would need a changed row with the same 64-bit hash). At most
    `most` runs are kept (past that, all are dropped at once): about 0.5 KB each."""

    def __init__(self, decode: Callable[[Sequence[Any]], RunRecord], most: int = 20_000) -> None:
        self._decode = decode
        self._most = most
        self._kept: dict[str, tuple[int, bytes]] = {}

    def serialized(self, row: Sequence[Any], node_name: str) -> bytes:
        """The run of `row` (a `list_run_rows` row: its id first) as `run_to_pb(...).SerializeToString()`."""
        mark = hash((tuple(row), node_name))
        kept = self._kept.get(row[0])
        if kept is not None and kept[0] == mark:
            return kept[1]
        shown = run_to_pb(self._decode(row), node_name=node_name).SerializeToString()
        if len(self._kept) >= self._most:
            self._kept.clear()
        self._kept[row[0]] = (mark, shown)
        return shown


def runs_response(serialized: Iterable[bytes], truncated: bool) -> pb.ListRunsResponse:
    """A ListRunsResponse of serialized `pb.Run`s, parsed once as a whole (field 1, length-delimited each)."""
    wire = b"".join(b"\x0a" + _varint(len(run)) + run for run in serialized)
    return pb.ListRunsResponse.FromString(wire + (b"\x10\x01" if truncated else b""))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def log_chunk_to_pb(chunk: LogChunk, *, rank: int | None = None) -> pb.LogChunk:
    """Stored consecutive records as they go to a client; `rank` overrides theirs (as `log_to_pb`)."""
    return pb.LogChunk(attempt=chunk.attempt, rank=chunk.rank if rank is None else rank,
                       stream=chunk.stream,  # type: ignore[arg-type]  # the wire's number, stored as is
                       first_seq=chunk.first_seq, data=chunk.data, lengths=chunk.lengths, flags=chunk.flags,
                       ts=chunk.ts)


def log_to_pb(row: LogRow, *, rank: int | None = None) -> pb.LogLine:
    """One stored record; `rank` overrides the record's own (a multi-node run's child is its node rank)."""
    return pb.LogLine(
        attempt=row.attempt,
        record=pb.LogRecord(
            # The stored value is the wire's own; the generated stubs accept only a `Stream` member here.
            stream=row.stream,  # type: ignore[arg-type]
            seq=row.seq, ts=row.ts, data=row.data, continued=bool(row.flags & 1),
            gap=bool(row.flags & 2), rank=row.rank if rank is None else rank,
        ),
    )


def event_to_pb(event: ClusterEvent) -> pb.ClusterEvent:
    return pb.ClusterEvent(at=event.at, cluster=event.cluster, node=event.node, kind=event.kind, detail=event.detail)


def node_to_pb(node: NodeRecord, *, state: NodeState, allocated: tuple[float, int, int], running: list[str],
               events: list[RunEventRecord] | None = None) -> pb.Node:
    cpus, memory, gpus = allocated
    msg = pb.Node(
        schedule=to_pb(node.schedule),
        drained=node.schedule is Schedule.DRAINING and not running,
        awaiting_approval=not node.approved,
        id=node.id,
        name=node.name,
        cluster=node.cluster,
        state=to_pb(state),
        capacity=capacity_to_pb(node.capacity),
        allocated=pb.Resources(cpus=cpus, memory_bytes=memory, gpus=gpus),
        running=running,
        last_seen=node.last_seen,
        labels=node.labels,
    )
    for event in events or ():
        msg.events.add(at=event.at, from_state=event.from_state, to_state=event.to_state, event=event.event,
                       detail=event.detail)
    return msg


def environment_to_pb(env: EnvironmentRecord, *, env_hash: str, built_on: Iterable[str] = ()) -> pb.Environment:
    return pb.Environment(name=env.name, version=env.version, description=env.description, tags=env.tags,
                          spec=env_to_pb(env.spec), hash=env_hash, created_at=env.created_at, built_on=built_on,
                          created_by=env.created_by)


def token_to_pb(token: TokenRecord) -> pb.Token:
    return pb.Token(id=token.id, name=token.name, workspace=token.workspace, role=to_pb(token.role),
                    created_at=token.created_at, expires_at=token.expires_at, revoked_at=token.revoked_at,
                    created_by=token.created_by)


def audit_to_pb(entry: AuditRecord) -> pb.AuditEntry:
    return pb.AuditEntry(id=entry.id, at=entry.at, user=entry.user, workspace=entry.workspace, method=entry.method,
                         target=entry.target, peer=entry.peer, code=entry.code)
