"""The NodeAgent gRPC service: agents join, hold one Connect stream each, fetch snapshots, upload outputs.

On the Connect stream the agent's first message is Hello (capacity and the attempts it supervises); the head
reconciles those against the store, then handles each message in order and acknowledges it cumulatively once
committed. Reports are fenced by attempt: a report for an attempt that is not the run's current one on this node
is refused, and the agent stops that attempt.
Must not: decide placement (dispatch) or state rules (lifecycle); it applies what the agent observed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from protos import runyard_pb2 as pb
from protos import runyard_pb2_grpc as pb_grpc
from scheduler import gangs
from scheduler.artifacts import ArtifactStore
from scheduler.attempts import lose_attempt
from scheduler.auth import Credentials, caller, new_token, token_sha
from scheduler.convert import capacity_from_pb
from scheduler.dispatch import Dispatcher
from scheduler.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from scheduler.followers import Followers
from scheduler.lifecycle import ACTIVE, NODE_SIDE, TERMINAL, DesiredState, InvalidTransition, Reason, Trigger, outcome
from scheduler.model import Principal, RunRecord
from scheduler.sessions import CLOSE, Session, Sessions
from scheduler.store import LOG_CONTINUED, LOG_GAP, NotCurrentAttempt, Store

log = logging.getLogger(__name__)

_PHASE_TRIGGER = {pb.RunUpdate.RUNNING: Trigger.START, pb.RunUpdate.FINALIZING: Trigger.FINALIZE}


class StaleAttempt(Exception):
    """A report about an attempt that is not the run's current one on this node."""


class NodeAgentService(pb_grpc.NodeAgentServicer):
    def __init__(
        self, *, store: Store, artifacts: ArtifactStore, sessions: Sessions, dispatcher: Dispatcher,
        followers: Followers, credentials: Credentials, tmp_dir: Path, max_retries: int, max_outputs_bytes: int,
        quarantine_after: int = 3,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._sessions = sessions
        self._dispatcher = dispatcher
        self._followers = followers
        self._credentials = credentials
        self._tmp_dir = tmp_dir
        self._max_retries = max_retries
        self._max_outputs_bytes = max_outputs_bytes
        self._quarantine_after = quarantine_after

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        if not request.name or len(request.name) > 253:
            raise InvalidArgument("a node needs a name of 1 to 253 characters")
        token = new_token()
        node_id = await self._store.join_node(
            node_id=hashlib.sha256(request.name.encode()).hexdigest()[:16], name=request.name,
            token_sha=token_sha(token), cluster=request.cluster or "default", labels=dict(request.labels),
            capacity=capacity_from_pb(request.capacity),
        )
        self._credentials.forget_node(node_id)
        self._credentials.add(token_sha(token), Principal("", "node", node_id))
        log.info("node joined", extra={"node": request.name, "node_id": node_id})
        return pb.JoinResponse(node_id=node_id, node_token=token)

    async def Connect(self, request_iterator: AsyncIterator[pb.AgentMessage], context: grpc.aio.ServicerContext) -> None:
        node_id = caller().node_id
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("hello"):
            raise InvalidArgument("the first message on Connect must be hello")
        node = await self._store.get_node(node_id)
        now = self._store.clock()
        capacity = capacity_from_pb(first.hello.capacity)
        session = Session(node_id, node.name, node.cluster, capacity, node.schedule, labels=node.labels,
                          failures_in_row=node.failures_in_row)
        self._sessions.attach(session)
        self._sessions.heard(node_id, now, node.name)
        await self._store.set_node_state(node_id, "Ready", capacity=capacity)
        log.info("node connected", extra={"node": node.name, "running": len(first.hello.running)})
        try:
            await self._reconcile(session, first.hello)
            session.outbox.put_nowait(pb.HeadMessage(ack=pb.Ack(msg_seq=first.msg_seq)))
            self._dispatcher.wake()
            async with asyncio.TaskGroup() as tasks:
                writer = tasks.create_task(self._write(session, context), name=f"write-{node.name}")
                await self._read(session, request_iterator)
                writer.cancel()
        finally:
            if self._sessions.detach(session):
                await self._store.set_node_state(node_id, "Disconnected")
                log.info("node disconnected", extra={"node": node.name})

    async def _write(self, session: Session, context: grpc.aio.ServicerContext) -> None:
        while (message := await session.outbox.get()) is not CLOSE:
            await context.write(message)

    async def _read(self, session: Session, messages: AsyncIterator[pb.AgentMessage]) -> None:
        async for message in messages:
            if self._sessions.get(session.node_id) is not session:
                return  # replaced by a newer stream of the same node
            kind = message.WhichOneof("body")
            self._sessions.heard(session.node_id, self._store.clock())
            if kind == "heartbeat":  # answered, so that an agent whose runs are quiet still hears the head
                session.outbox.put_nowait(pb.HeadMessage(ack=pb.Ack(msg_seq=message.msg_seq)))
                continue
            try:
                if kind == "run_update":
                    await self._apply_update(session, message.run_update)
                elif kind == "logs":
                    await self._apply_logs(session, message.logs)
                elif kind == "metrics":
                    await self._apply_metrics(session, message.metrics)
                else:
                    raise InvalidArgument(f"unexpected {kind} on Connect")
            except StaleAttempt as err:
                run_id, attempt = err.args
                session.outbox.put_nowait(
                    pb.HeadMessage(refusal=pb.Refusal(msg_seq=message.msg_seq, run_id=run_id, attempt=attempt,
                                                      why="not the run's current attempt on this node"))
                )
            session.outbox.put_nowait(pb.HeadMessage(ack=pb.Ack(msg_seq=message.msg_seq)))

    async def _reconcile(self, session: Session, hello: pb.Hello) -> None:
        """Make the store and the agent agree on what runs on this node."""
        reported = {(h.run_id, h.attempt) for h in hello.running}
        for run in await self._store.runs_in(ACTIVE):
            if run.node_id == session.node_id and (run.id, run.attempt) not in reported:
                await lose_attempt(self._store, self._sessions, self._followers, run,
                                   detail=f"{session.name} does not know this attempt", default_retries=self._max_retries)
        for run_id, attempt in reported:
            try:
                run = await self._store.get_run(run_id)
            except Exception:
                run = None
            if run is None or run.attempt != attempt or run.node_id != session.node_id or run.state in TERMINAL:
                session.outbox.put_nowait(pb.HeadMessage(cancel=pb.CancelRun(run_id=run_id, attempt=attempt, reason="stale")))
            elif run.desired_state is DesiredState.STOP:
                session.outbox.put_nowait(
                    pb.HeadMessage(cancel=pb.CancelRun(run_id=run_id, attempt=attempt, reason=Reason.CANCELED_BY_USER))
                )

    async def _fence(self, session: Session, run_id: str, attempt: int) -> RunRecord:
        run = await self._store.get_run(run_id)
        if run.attempt != attempt or run.node_id != session.node_id:
            raise StaleAttempt(run_id, attempt)
        return run

    async def _apply_update(self, session: Session, update: pb.RunUpdate) -> None:
        if update.phase == pb.RunUpdate.PREPARING:
            await self._fence(session, update.run_id, update.attempt)
            return
        try:
            if update.phase in _PHASE_TRIGGER:  # fenced by the transition itself
                sets = {"started_at": update.at or self._store.clock()} if update.phase == pb.RunUpdate.RUNNING else {}
                detail = f"pid {update.pid}" if update.pid else update.detail
                moved = await self._store.transition(update.run_id, _PHASE_TRIGGER[update.phase], attempt=update.attempt,
                                                     on_node=session.node_id, detail=detail, **sets)
            elif update.phase == pb.RunUpdate.EXITED:
                run = await self._fence(session, update.run_id, update.attempt)
                result = outcome(exit_code=update.exit_code, agent_reason=update.reason, desired=run.desired_state)
                moved = await self._store.transition(
                    update.run_id, result.trigger, attempt=update.attempt, on_node=session.node_id, reason=result.reason,
                    exit_code=update.exit_code, outputs_sha256=update.outputs_sha256,
                    ended_at=update.at or self._store.clock(), detail=update.detail,
                )
                log.info("run ended", extra={"run_id": update.run_id, "exit_code": update.exit_code,
                                             "trigger": result.trigger, "reason": result.reason})
                if result.trigger is not Trigger.CANCEL:
                    await self._count_for_quarantine(session, result.reason)
                self._dispatcher.wake()
            else:
                raise InvalidArgument(f"unknown run phase {update.phase}")
        except NotCurrentAttempt:
            raise StaleAttempt(update.run_id, update.attempt) from None
        except InvalidTransition:
            return  # a report resent after a reconnect, already applied
        finally:
            self._followers.notify(update.run_id)
        if moved.parent_id:
            await gangs.follow_children(self._store, self._sessions, self._followers, moved.parent_id)

    async def _count_for_quarantine(self, session: Session, reason: str) -> None:
        node_side = reason in NODE_SIDE
        if not node_side and not session.failures_in_row:
            return
        session.failures_in_row = session.failures_in_row + 1 if node_side else 0
        node = await self._store.count_node_failure(
            session.node_id, node_side=node_side, quarantine_after=self._quarantine_after)
        if node is not None:
            session.schedule = node.schedule
            log.warning("node quarantined", extra={"node": node.name, "failures_in_row": self._quarantine_after})

    async def _apply_logs(self, session: Session, batch: pb.LogBatch) -> None:
        run = await self._fence(session, batch.run_id, batch.attempt)
        rows = [
            (r.rank, r.stream, r.seq, r.ts, (LOG_CONTINUED if r.continued else 0) | (LOG_GAP if r.gap else 0), r.data)
            for r in batch.records
        ]
        await self._store.append_logs(batch.run_id, batch.attempt, rows)
        self._followers.notify(batch.run_id)
        if run.parent_id:
            self._followers.notify(run.parent_id)  # `logs -f` of a multi-node run follows its children

    async def _apply_metrics(self, session: Session, batch: pb.MetricBatch) -> None:
        await self._fence(session, batch.run_id, batch.attempt)
        points = [(rec.seq, p.key, p.step, p.value, p.ts) for rec in batch.records for p in rec.points]
        params = {k: v for rec in batch.records for k, v in rec.params.items()}
        tags = {k: v for rec in batch.records for k, v in rec.tags.items()}
        await self._store.append_metrics(batch.run_id, batch.attempt, points, params, tags)
        self._followers.notify(batch.run_id)

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
