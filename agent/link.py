"""The agent's connection to the head: join once, then one Connect stream, reconnecting for ever.

`run()` keeps a stream open: it sends Hello (capacity and the attempts this agent knows), resends every
unacknowledged outbox message, then new ones as they come and a heartbeat when idle; it applies what the head
sends (acks, assignments, cancels, refusals). A broken stream is retried with capped, jittered back-off; an
UNAUTHENTICATED answer makes the agent join again with the join token. `run()` ends only by cancellation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc

from agent.config import AgentConfig
from agent.outbox import Outbox
from protos import runyard_pb2 as pb
from protos import runyard_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
              grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED}


class JoinRefused(Exception):
    """The head refused the join token: nothing this agent can fix by retrying."""


class HeadLink:
    def __init__(
        self, *, config: AgentConfig, outbox: Outbox, capacity: pb.Capacity,
        live_attempts: Callable[[], set[tuple[str, int]]],
        on_assign: Callable[[pb.Assignment], None], on_stop: Callable[[str, int, str], None],
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._capacity = capacity
        self._live_attempts = live_attempts
        self._on_assign = on_assign
        self._on_stop = on_stop
        self._credential_file = config.data_path / "node.json"
        self._token = ""
        self.connected = asyncio.Event()
        self.last_contact = time.monotonic()       # when the head last said anything
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
            raise
        self._token = reply.node_token
        tmp = self._credential_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"node_id": reply.node_id, "node_token": reply.node_token}))
        tmp.chmod(0o600)
        tmp.replace(self._credential_file)
        log.info("joined the cluster", extra={"node_id": reply.node_id, "head": self._config.head_address})

    async def run(self) -> None:
        """Keep a Connect stream open until cancelled; raises JoinRefused when the join token is refused."""
        backoff_s = 0.05
        while True:
            try:
                await self._stream(await self._credential())
                backoff_s = 0.05
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.warning("node credential refused; joining again")
                    self._token = ""
                    self._credential_file.unlink(missing_ok=True)
                elif err.code() not in _RETRYABLE:
                    log.error("connect failed", extra={"code": err.code().name, "details": err.details()})
                log.debug("head unreachable", extra={"code": err.code().name})
            finally:
                self.connected.clear()
            await asyncio.sleep(backoff_s * (0.5 + random.random()))
            backoff_s = min(backoff_s * 2, self._config.reconnect_max_s)

    async def _stream(self, token: str) -> None:
        call = self._stub.Connect(self._requests(), metadata=self._metadata(token))
        async for message in call:
            self.last_contact = time.monotonic()
            kind = message.WhichOneof("body")
            if kind == "ack":
                self.connected.set()
                self._outbox.ack(message.ack.msg_seq)
            elif kind == "assign":
                self._on_assign(message.assign)
            elif kind == "cancel":
                reason = message.cancel.reason or pb.REASON_CANCELED_BY_USER
                self._on_stop(message.cancel.run_id, message.cancel.attempt,
                              pb.Reason.Name(reason).removeprefix("REASON_").lower())
            elif kind == "refusal":
                refusal = message.refusal
                log.warning("head refused a report", extra={"run_id": refusal.run_id, "attempt": refusal.attempt,
                                                            "why": refusal.why})
                self._outbox.drop_attempt(refusal.run_id, refusal.attempt)
                self._on_stop(refusal.run_id, refusal.attempt, "stale")

    async def _requests(self) -> AsyncIterator[pb.AgentMessage]:
        running = sorted(self._live_attempts() | self._outbox.attempts())
        hello = pb.Hello(capacity=self._capacity, running=[pb.RunHandle(run_id=r, attempt=a) for r, a in running])
        yield pb.AgentMessage(msg_seq=self._outbox.next_seq(), hello=hello)
        sent = 0
        while True:
            self._outbox.changed.clear()
            for message in self._outbox.after(sent):
                yield message
                sent = message.msg_seq
            if self._outbox.after(sent):
                continue
            try:
                async with asyncio.timeout(self._config.heartbeat_interval_s):
                    await self._outbox.changed.wait()
            except TimeoutError:
                yield pb.AgentMessage(msg_seq=self._outbox.next_seq(), heartbeat=pb.Heartbeat())

    async def _retry(self, what: str, attempt_call: Callable[[], object]) -> None:
        backoff_s = 0.1
        while True:
            try:
                await attempt_call()  # type: ignore[misc]
                return
            except grpc.aio.AioRpcError as err:
                if err.code() not in _RETRYABLE:
                    raise RuntimeError(f"{what} failed: {err.code().name}: {err.details()}") from None
                log.info("transfer interrupted; retrying", extra={"what": what, "code": err.code().name})
            await asyncio.sleep(backoff_s)
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


__all__ = ["HeadLink", "JoinRefused"]
