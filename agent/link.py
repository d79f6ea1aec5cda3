"""The agent's connection to the head: join once, then one Connect stream, reconnecting for ever.

`run()` keeps a stream open: it sends Hello (capacity and the attempts this agent knows), resends every
unacknowledged outbox message, then new ones as they come and a heartbeat when idle; it applies what the head
sends (acks, assignments, cancels). gRPC errors are translated here and nowhere else:

- UNAUTHENTICATED on Connect: the node credential is gone; join again with the join token.
- UNAUTHENTICATED on Join, or no join token: `JoinRefused`, which ends the agent.
- ALREADY_EXISTS on Join or Connect: another live agent holds this node name; `NodeNameTaken` ends the agent.
- RESOURCE_EXHAUSTED on Connect: the head is out of space. One warning per episode, every unacknowledged
  report kept in the outbox, back-off up to `head_full_retry_max_s`, one line when delivery resumes.
- Anything else: retried with capped, jittered back-off; an error that is not a gRPC status (a bug here, in a
  callback, in building a message) is logged with its traceback and context, then retried the same way.

`run()` ends only by cancellation or by raising JoinRefused / NodeNameTaken. Timers use the injected `Clock`.
Must not: run anything or touch the disk beyond the node credential (`node.json`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc

from runyard.clock import Clock, wait_event
from agent.config import AgentConfig
from agent.errors import JoinRefused, NodeNameTaken
from agent.outbox import Outbox
from agent.runmodel import Reason
from agent.wire import reason_from_pb
from protos import runyard_pb2 as pb
from protos import runyard_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
_FIRST_BACKOFF_S = 0.05
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
              grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED}
_FATAL = (JoinRefused, NodeNameTaken)

__all__ = ["HeadLink", "JoinRefused", "NodeNameTaken"]


class _CallCancelled(Exception):
    """grpc cancelled the Connect call under the link (its request iterator raised; that was logged)."""


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class HeadLink:
    def __init__(
        self, *, config: AgentConfig, outbox: Outbox, capacity: pb.Capacity, clock: Clock,
        live_attempts: Callable[[], set[tuple[str, int]]],
        on_assign: Callable[[pb.Assignment], None], on_stop: Callable[[str, int, Reason], None],
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._capacity = capacity
        self._clock = clock
        self._live_attempts = live_attempts
        self._on_assign = on_assign
        self._on_stop = on_stop
        self._credential_file = config.data_path / "node.json"
        self._token = ""
        self._head_full = False                    # inside an episode of RESOURCE_EXHAUSTED on Connect
        self.connected = asyncio.Event()
        self.last_contact = clock.now()            # when the head last said anything, on `clock`
        options = [("grpc.max_receive_message_length", 16 * 1024 * 1024),
                   ("grpc.max_send_message_length", 16 * 1024 * 1024),
                   ("grpc.keepalive_time_ms", 20_000)]
        self._channel = grpc.aio.insecure_channel(config.head_address, options=options)
        self._stub = pb_grpc.NodeAgentStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    def _metadata(self, token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    async def _credential(self) -> str:
        if not self._token and self._credential_file.exists():
            self._token = json.loads(self._credential_file.read_text())["node_token"]
        if not self._token:
            await self._join()
        return self._token

    async def _join(self) -> None:
        secret = self._config.join_secret()
        if not secret:
            raise JoinRefused("no join token: set join_token or join_token_file in the agent config")
        try:
            reply = await self._stub.Join(
                pb.JoinRequest(name=self._config.name, cluster=self._config.cluster, labels=self._config.labels,
                               capacity=self._capacity),
                metadata=self._metadata(secret), timeout=10,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise JoinRefused(f"the head refused the join token: {err.details()}") from None
            if err.code() == grpc.StatusCode.ALREADY_EXISTS:
                raise NodeNameTaken(err.details() or f"node name {self._config.name!r} is taken") from None
            raise
        self._token = reply.node_token
        tmp = self._credential_file.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        # Private from its first byte: the data dir may be open to runs passing through to their directories.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"node_id": reply.node_id, "node_token": reply.node_token}))
        tmp.replace(self._credential_file)
        log.info("joined the cluster", extra={"node_id": reply.node_id, "head": self._config.head_address})

    async def run(self) -> None:
        """Keep a Connect stream open until cancelled; raises JoinRefused or NodeNameTaken."""
        backoff_s = _FIRST_BACKOFF_S
        while True:
            cap_s = self._config.reconnect_max_s
            try:
                await self._stream(await self._credential())
            except grpc.aio.AioRpcError as err:
                if self._on_rpc_error(err):
                    cap_s = max(cap_s, self._config.head_full_retry_max_s)
            except _CallCancelled:
                pass  # its cause is logged where it happened
            except _FATAL:
                raise
            except Exception as err:
                if isinstance(err, BaseExceptionGroup):
                    fatal, _ = err.split(_FATAL)
                    if fatal is not None:
                        raise fatal.exceptions[0] from err
                log.exception("head link failed; reconnecting",
                              extra={"head": self._config.head_address, "error": type(err).__name__,
                                     "unacknowledged": len(self._outbox)})
            if self.connected.is_set():
                backoff_s = _FIRST_BACKOFF_S  # the stream worked for a while: start the back-off over
            self.connected.clear()
            delay_s = min(backoff_s, cap_s) * (0.5 + random.random() / 2)
            log.debug("reconnecting", extra={"delay_s": round(delay_s, 3)})
            await self._clock.sleep(delay_s)
            backoff_s = min(backoff_s * 2, cap_s)

    def _on_rpc_error(self, err: grpc.aio.AioRpcError) -> bool:
        """Act on a failed Connect; True while the head is out of space. Raises what must end the agent."""
        code = err.code()
        if code == grpc.StatusCode.ALREADY_EXISTS:
            raise NodeNameTaken(err.details() or f"node name {self._config.name!r} is taken")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            if not self._head_full:
                self._head_full = True
                log.warning("head out of space; keeping the unacknowledged reports and retrying",
                            extra={"unacknowledged": len(self._outbox), "details": err.details()})
            return True
        if code == grpc.StatusCode.UNAUTHENTICATED:
            log.warning("node credential refused; joining again")
            self._token = ""
            self._credential_file.unlink(missing_ok=True)
        elif code not in _RETRYABLE:
            log.error("connect failed", extra={"code": code.name, "details": err.details()})
        else:
            log.debug("head unreachable", extra={"code": code.name})
        return False

    async def _stream(self, token: str) -> None:
        ended = asyncio.Event()
        call = self._stub.Connect(self._requests(ended), metadata=self._metadata(token))
        try:
            async for message in call:
                self.last_contact = self._clock.now()
                kind = message.WhichOneof("body")
                try:
                    self._apply(kind, message)
                except _FATAL:
                    raise
                except Exception:
                    log.exception("handling a message from the head failed", extra={"kind": kind})
        except asyncio.CancelledError:
            # grpc cancels the call itself when its request iterator raises, and then raises CancelledError
            # here; only a cancellation of this task may end the link.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise _CallCancelled() from None
        finally:
            ended.set()
            self._outbox.changed.set()  # wakes the request iterator of this call, which then ends

    def _apply(self, kind: str | None, message: pb.HeadMessage) -> None:
        if kind == "ack":
            self.connected.set()
            self._outbox.ack(message.ack.msg_seq)
            if self._head_full:
                self._head_full = False
                log.info("head has space again; delivery resumed", extra={"unacknowledged": len(self._outbox)})
        elif kind == "assign":
            self._on_assign(message.assign)
        elif kind == "cancel":
            cancel = message.cancel
            reason = self._stop_reason(cancel.reason)
            if reason is Reason.STALE:      # the head will take nothing more about this attempt
                self._outbox.drop_attempt(cancel.run_id, cancel.attempt)
            self._on_stop(cancel.run_id, cancel.attempt, reason)

    def _stop_reason(self, value: int) -> Reason:
        reason = reason_from_pb(value)
        if reason is None:
            log.warning("unknown stop reason from the head; stopping as a cancel", extra={"reason": value})
            return Reason.CANCELED_BY_USER
        return reason

    async def _requests(self, ended: asyncio.Event) -> AsyncIterator[pb.AgentMessage]:
        # grpc swallows an exception raised here (it cancels the call and logs at debug level): log it ourselves.
        try:
            running = sorted(self._live_attempts() | self._outbox.attempts())
            hello = pb.Hello(capacity=self._capacity, running=[pb.RunHandle(run_id=r, attempt=a) for r, a in running])
            yield pb.AgentMessage(msg_seq=self._outbox.acked, hello=hello)  # its ack must not cover resent reports
            # Nothing more until the head has taken Hello. A head that refuses the stream (out of space) does it
            # before; writing meanwhile would lose its status to grpc's INTERNAL "Internal error from Core" (a
            # write that fails after the server ended the call overwrites the status; grpc/grpc#36066).
            await _first_of(self.connected, ended)
            sent = 0
            while not ended.is_set():
                self._outbox.changed.clear()
                for message in self._outbox.after(sent):
                    yield message
                    sent = message.msg_seq
                if self._outbox.after(sent):
                    continue
                if not await wait_event(self._clock, self._outbox.changed, self._config.heartbeat_interval_s):
                    yield pb.AgentMessage(msg_seq=self._outbox.next_seq(), heartbeat=pb.Heartbeat())
        except Exception:
            log.exception("building messages for the head failed; reconnecting",
                          extra={"head": self._config.head_address, "unacknowledged": len(self._outbox)})
            raise

    async def _retry(self, what: str, attempt_call: Callable[[], Awaitable[None]]) -> None:
        backoff_s = 0.1
        while True:
            try:
                await attempt_call()
                return
            except grpc.aio.AioRpcError as err:
                if err.code() not in _RETRYABLE:
                    raise RuntimeError(f"{what} failed: {err.code().name}: {err.details()}") from None
                log.info("transfer interrupted; retrying", extra={"what": what, "code": err.code().name})
            await self._clock.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self._config.reconnect_max_s)

    async def fetch_snapshot(self, run_id: str, attempt: int, dest: Path) -> None:
        async def once() -> None:
            token = await self._credential()
            with open(dest, "wb") as f:
                async for chunk in self._stub.FetchSnapshot(
                    pb.FetchSnapshotRequest(run_id=run_id, attempt=attempt), metadata=self._metadata(token)
                ):
                    await asyncio.to_thread(f.write, chunk.data)
        await self._retry(f"snapshot of {run_id}", once)

    async def upload_outputs(self, run_id: str, attempt: int, archive: Path, sha256: str) -> None:
        size = archive.stat().st_size

        async def chunks() -> AsyncIterator[pb.OutputsChunk]:
            with open(archive, "rb") as f:
                first = True
                while (data := await asyncio.to_thread(f.read, CHUNK_BYTES)) or first:
                    yield pb.OutputsChunk(run_id=run_id, attempt=attempt, sha256=sha256, size=size, data=data)
                    first = False

        async def once() -> None:
            token = await self._credential()
            await self._stub.UploadOutputs(chunks(), metadata=self._metadata(token))
        await self._retry(f"outputs of {run_id}", once)
