"""Conversions between protobuf messages and the head's domain values. The only module that knows both."""

from __future__ import annotations

from protos import runyard_pb2 as pb
from scheduler.model import Capacity, ClusterEvent, Gpu, LogRow, NodeRecord, RunEventRecord, RunRecord, RunSpec


def spec_from_pb(msg: pb.RunSpec) -> RunSpec:
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
    )


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
    )


def capacity_from_pb(msg: pb.Capacity) -> Capacity:
    return Capacity(
        cpus=msg.cpus,
        memory_bytes=msg.memory_bytes,
        disk_bytes=msg.disk_bytes,
        gpus=tuple(Gpu(g.index, g.uuid, g.model, g.memory_bytes) for g in msg.gpus),
    )


def capacity_to_pb(cap: Capacity) -> pb.Capacity:
    return pb.Capacity(
        cpus=cap.cpus,
        memory_bytes=cap.memory_bytes,
        disk_bytes=cap.disk_bytes,
        gpus=[pb.GpuInfo(index=g.index, uuid=g.uuid, model=g.model, memory_bytes=g.memory_bytes) for g in cap.gpus],
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
        state=run.state,
        reason=run.reason,
        has_exit_code=run.exit_code is not None,
        exit_code=run.exit_code or 0,
        pending_reason=run.pending_reason,
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
        desired_state=run.desired_state,
        priority=run.priority,
    )
    for event in events or ():
        msg.events.add(at=event.at, from_state=event.from_state, to_state=event.to_state, event=event.event, detail=event.detail)
    return msg


def log_to_pb(row: LogRow, *, rank: int | None = None) -> pb.LogLine:
    """One stored record; `rank` overrides the record's own (a multi-node run's child is its node rank)."""
    return pb.LogLine(
        attempt=row.attempt,
        record=pb.LogRecord(
            stream=row.stream, seq=row.seq, ts=row.ts, data=row.data, continued=bool(row.flags & 1),
            gap=bool(row.flags & 2), rank=row.rank if rank is None else rank,
        ),
    )


def event_to_pb(event: ClusterEvent) -> pb.ClusterEvent:
    return pb.ClusterEvent(at=event.at, cluster=event.cluster, node=event.node, kind=event.kind, detail=event.detail)


def node_to_pb(node: NodeRecord, *, state: str, allocated: tuple[float, int, int], running: list[str]) -> pb.Node:
    cpus, memory, gpus = allocated
    schedule = "drained" if node.schedule == "draining" and not running else node.schedule
    return pb.Node(
        schedule=schedule,
        id=node.id,
        name=node.name,
        cluster=node.cluster,
        state=state,
        capacity=capacity_to_pb(node.capacity),
        allocated=pb.Resources(cpus=cpus, memory_bytes=memory, gpus=gpus),
        running=running,
        last_seen=node.last_seen,
        labels=node.labels,
    )
