"""The NodeAgent gRPC service: agents join, hold one Connect stream each, fetch snapshots, upload outputs.

On the Connect stream the agent's first message is Hello (capacity, with the environments it has built, and the
attempts it supervises); the reactor reconciles those against the store, then each message is handled in order and
acknowledged cumulatively once committed. A heartbeat that names built environments replaces the session's set.
Run reports become `core.react.Report` events; logs, metrics and the agent's usage samples of a run (its system
metrics, stored apart) are fenced by attempt here: those of an attempt
that is not the run's current one on this node are dropped, and the agent is told to stop that attempt.
Join enrolls a node (`enrollment.py`): a join token and a CSR buy a certificate bound to the node's name; the
other methods are called on the node port with that certificate. A Join for a node name whose agent is connected
and Ready is refused (ALREADY_EXISTS, naming the holder), as is one with another key than the name's.
Must not: decide anything about runs or nodes (that is `scheduler/core/`); it converts and hands over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path

import grpc

from protos import runyard_pb2 as pb
from protos import runyard_pb2_grpc as pb_grpc
from runyard import usagekeys
from scheduler.artifacts import ArtifactStore
from scheduler.auth import caller
from scheduler.convert import capacity_from_pb, env_hashes_from_pb, outbound_to_pb, report_from_pb
from scheduler.core.nodes import NodeState
from scheduler.enrollment import Enrollment
from scheduler.core.react import Hello, NodeHeard, StreamClosed
from scheduler.errors import AlreadyExists, DiskFull, FailedPrecondition, HeadError, InvalidArgument, ResourceExhausted
from scheduler.followers import Followers
from scheduler.reactor import Reactor
from scheduler.sessions import CLOSE, Ack, Session, Sessions, StopAttempt
from scheduler.core.lifecycle import Reason
from scheduler.model import RunRecord
from scheduler.store import END_WORDS, LOG_CONTINUED, NO_TEXTS, LOG_GAP, Store, TrackingRecord

log = logging.getLogger(__name__)


class StaleAttempt(Exception):
    """Logs or metrics of an attempt that is not the run's current one on this node."""


class NodeAgentService(pb_grpc.NodeAgentServicer):
    def __init__(
        self, *, store: Store, artifacts: ArtifactStore, sessions: Sessions, reactor: Reactor,
        followers: Followers, enrollment: Enrollment, ca_pem: bytes, tmp_dir: Path, max_outputs_bytes: int,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._sessions = sessions
        self._reactor = reactor
        self._followers = followers
        self._enrollment = enrollment
        self._ca_pem = ca_pem
        self._tmp_dir = tmp_dir
        self._max_outputs_bytes = max_outputs_bytes
        self._disk_full = False
        self.on_ingest: Callable[[int, int], None] = lambda log_records, metric_points: None   # the metrics' counters

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        name = request.name
        if len(name) <= 253:
            self._refuse_if_held(hashlib.sha256(name.encode()).hexdigest()[:16], name)
        enrolled = await self._enrollment.enroll(
            join_sha=caller().token_id, name=name, cluster=request.cluster, labels=dict(request.labels),
            capacity=capacity_from_pb(request.capacity), csr_pem=request.csr)
        log.info("node joined", extra={"node": name, "node_id": enrolled.node.id, "peer": context.peer()})
        return pb.JoinResponse(node_id=enrolled.node.id, certificate=enrolled.certificate,
                               ca_certificate=self._ca_pem)

    def _refuse_if_held(self, node_id: str, name: str) -> None:
        """One name, one live agent: a Join for a name whose agent is connected and Ready is refused."""
        session, facts = self._sessions.get(node_id), self._sessions.facts(node_id)
        if session is not None and facts is not None and facts.state is NodeState.READY:
            since = datetime.fromtimestamp(session.since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise AlreadyExists(
                f"node name {name!r} is held by a live agent connected from {session.peer or 'unknown'} since "
                f"{since}; give this agent another name, or stop the other one first")

    async def Connect(self, request_iterator: AsyncIterator[pb.AgentMessage], context: grpc.aio.ServicerContext) -> None:
        node_id = caller().node_id
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("hello"):
            raise InvalidArgument("the first message on Connect must be hello")
        node = await self._store.get_node(node_id)
        now = self._store.clock()
        capacity = capacity_from_pb(first.hello.capacity)
        self._enrollment.check_capacity(node.name, capacity)
        session = Session(node_id, node.name, node.cluster, capacity, labels=node.labels, since=now, peer=context.peer(),
                          env_hashes=env_hashes_from_pb(first.hello.capacity.env_hashes))
        if self._sessions.facts(node_id) is None:
            self._sessions.remember(node)
        try:
            await self._store.set_node_capacity(node_id, capacity)
            self._sessions.attach(session)
            self._sessions.heard(node_id, now)
            await self._reactor.handle(Hello(node_id, frozenset((h.run_id, h.attempt) for h in first.hello.running)))
            log.info("node connected", extra={"node": node.name, "running": len(first.hello.running)})
            session.outbox.put_nowait(Ack(first.msg_seq))    # the Hello's node move woke the dispatcher
            async with asyncio.TaskGroup() as tasks:
                writer = tasks.create_task(self._write(session, context), name=f"write-{node.name}")
                await self._read(session, request_iterator)
                writer.cancel()
            self._disk_full_over()
        except* DiskFull as group:
            self._warn_disk_full(node.name)
            raise group.exceptions[0] from None
        except* HeadError as group:
            raise group.exceptions[0] from None
        finally:
            if self._sessions.detach(session):
                try:
                    await self._reactor.handle(StreamClosed(node_id))
                except HeadError:
                    log.warning("could not record a closed stream", extra={"node": node.name})
                log.info("node disconnected", extra={"node": node.name})

    def _warn_disk_full(self, node: str) -> None:
        if not self._disk_full:
            self._disk_full = True
            log.warning("the disk is full: agents keep their reports until space is freed", extra={"node": node})

    def _disk_full_over(self) -> None:
        if self._disk_full:
            self._disk_full = False
            log.info("writes resumed after a full disk")

    async def _write(self, session: Session, context: grpc.aio.ServicerContext) -> None:
        while (message := await session.outbox.get()) is not CLOSE:
            await context.write(outbound_to_pb(message))

    async def _read(self, session: Session, messages: AsyncIterator[pb.AgentMessage]) -> None:
        node_id = session.node_id
        async for message in messages:
            if self._sessions.get(node_id) is not session:
                return  # replaced by a newer stream of the same node
            facts = self._sessions.facts(node_id)
            if facts is None or facts.state in (NodeState.DOWN, NodeState.LEFT):
                # The head gave this node up (its runs were requeued) while its stream stayed open, e.g. a frozen
                # agent: end the stream, so that it reconnects, says Hello and stops what it should not run.
                log.warning("heard from a node declared down; closing its stream", extra={"node": session.name})
                return
            self._sessions.heard(node_id, self._store.clock())
            if facts.state is NodeState.DISCONNECTED:
                await self._reactor.handle(NodeHeard(node_id))
            kind = message.WhichOneof("body")
            if kind == "run_update":
                try:
                    report = report_from_pb(node_id, message.run_update)
                except ValueError as err:
                    raise InvalidArgument(str(err)) from None
                await self._reactor.handle(report)
            elif kind in ("logs", "metrics"):
                batch = message.logs if kind == "logs" else message.metrics
                try:
                    run = await self._fence(session, batch.run_id, batch.attempt)
                except StaleAttempt:
                    session.outbox.put_nowait(StopAttempt(batch.run_id, batch.attempt, Reason.STALE))
                else:
                    await (self._apply_logs(run, message.logs) if kind == "logs" else self._apply_metrics(run, message.metrics))
            elif kind == "heartbeat":   # answered, so that an agent with quiet runs still hears the head
                if message.heartbeat.env_hashes:    # its built environments changed: all of them, as they are now
                    session.env_hashes = env_hashes_from_pb(message.heartbeat.env_hashes)
            else:
                raise InvalidArgument(f"unexpected {kind} on Connect")
            session.outbox.put_nowait(Ack(message.msg_seq))

    async def _fence(self, session: Session, run_id: str, attempt: int) -> RunRecord:
        try:
            run = await self._store.get_run(run_id)
        except HeadError:
            raise StaleAttempt(run_id, attempt) from None
        if run.attempt != attempt or run.node_id != session.node_id:
            raise StaleAttempt(run_id, attempt)
        return run

    async def _apply_logs(self, run: RunRecord, batch: pb.LogBatch) -> None:
        rows = [
            (r.rank, r.stream, r.seq, r.ts, (LOG_CONTINUED if r.continued else 0) | (LOG_GAP if r.gap else 0), r.data)
            for r in batch.records
        ]
        await self._store.append_logs(batch.run_id, batch.attempt, rows)
        self.on_ingest(len(rows), 0)
        self._followers.notify(batch.run_id)
        if run.parent_id:
            self._followers.notify(run.parent_id)  # `logs -f` of a multi-node run follows its children

    async def _apply_metrics(self, run: RunRecord, batch: pb.MetricBatch) -> None:
        """The run's records and those of the tracked runs its script started (the store checks they are its)."""
        records = [TrackingRecord(rank=rec.rank, seq=rec.seq, run_id=rec.run_id, ts=rec.ts,
                                  keys=rec.keys, steps=rec.steps, values=rec.values,
                                  params=dict(rec.params) if rec.params else NO_TEXTS,
                                  tags=dict(rec.tags) if rec.tags else NO_TEXTS,
                                  child=(rec.child.id, rec.child.name) if rec.HasField("child") else None,
                                  end=rec.end if rec.end in END_WORDS else "")
                   for rec in batch.records]
        if batch.usage:     # the agent's samples of the attempt's use of its node: its system metrics
            await self._store.append_usage(batch.run_id, batch.attempt, [
                (sample.seq, sample.ts, [(p.key, p.value) for p in sample.points if p.key.startswith(usagekeys.PREFIX)])
                for sample in batch.usage])
        if not batch.records:
            return
        applied = await self._store.apply_records(batch.run_id, batch.attempt, records)
        self.on_ingest(0, sum(len(rec.keys) for rec in records))
        if applied.dropped:
            log.warning("records naming runs that are not the attempt's own were dropped",
                        extra={"run_id": batch.run_id, "attempt": batch.attempt, "dropped": applied.dropped})
        self._followers.notify(batch.run_id)
        for changed in applied.runs:
            self._followers.notify(changed)

    async def FetchSnapshot(self, request: pb.FetchSnapshotRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DataChunk]:
        run = await self._store.run_for_node(request.run_id, request.attempt, caller().node_id)
        async for chunk, size in self._artifacts.stream("snapshots", run.snapshot_sha256):
            yield pb.DataChunk(data=chunk, size=size)

    async def UploadOutputs(self, request_iterator: AsyncIterator[pb.OutputsChunk], context: grpc.aio.ServicerContext) -> pb.OutputsResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise InvalidArgument("empty upload")
        await self._store.run_for_node(first.run_id, first.attempt, caller().node_id)
        path = await receive_blob(first.data, (c.data async for c in request_iterator), first.sha256,
                                  tmp_dir=self._tmp_dir, max_bytes=self._max_outputs_bytes)
        await asyncio.to_thread(self._artifacts.put, "outputs", first.sha256, path)
        return pb.OutputsResponse(sha256=first.sha256)


async def receive_blob(first: bytes, rest: AsyncIterator[bytes], sha256: str, *, tmp_dir: Path, max_bytes: int) -> Path:
    """Stream an upload into a temp file, checking its size cap and its sha256; returns the file."""
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise InvalidArgument("the upload must name the sha256 of its content (64 hex digits)")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=tmp_dir, delete=False, suffix=".part") as f:
        path = Path(f.name)
        try:
            data: bytes | None = first
            while data is not None:
                size += len(data)
                if size > max_bytes:
                    raise ResourceExhausted(f"upload is over the head's limit of {max_bytes} bytes")
                digest.update(data)
                await asyncio.to_thread(f.write, data)
                data = await anext(rest, None)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    if digest.hexdigest() != sha256:
        path.unlink(missing_ok=True)
        raise FailedPrecondition("upload corrupted in transit: its sha256 does not match; retry")
    return path


__all__ = ["NodeAgentService", "receive_blob"]
