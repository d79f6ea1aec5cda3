"""The agent's connection to the head: enroll once, then one Connect stream, reconnecting for ever.

Enrollment (`_join`) sends a CSR for the node's key with the join token to the head's client port (TLS, the head
checked against the cluster CA); the certificate it gets back is this node's credential from then on, on the
head's node port (mTLS). Every call after enrollment goes there.

`run()` keeps a stream open: it sends Hello (capacity, with the environments the node has built, and the attempts
this agent knows), resends every unacknowledged outbox message, then new ones as they come and a heartbeat when
idle, or at once with the node's environments when they changed (`environments_changed()`); it applies what the
head sends (acks, assignments, cancels, environments to build for no run). gRPC errors are translated here and
nowhere else:

- UNAUTHENTICATED on Connect: the certificate was revoked (the node removed); enroll again with the join token.
- PERMISSION_DENIED on Connect: the node waits for an admin's approval; one warning, then the longer back-off.
- UNAUTHENTICATED or INVALID_ARGUMENT on Join, or no join token: `JoinRefused`, which ends the agent.
- ALREADY_EXISTS on Join or Connect: another live agent (or another key) holds this node name; `NodeNameTaken`
  ends the agent.
- RESOURCE_EXHAUSTED on Connect: the head is out of space. One warning per episode, every unacknowledged
  report kept in the outbox, back-off up to `head_full_retry_max_s`, one line when delivery resumes.
- Anything else: retried with capped, jittered back-off; an error that is not a gRPC status (a bug here, in a
  callback, in building a message) is logged with its traceback and context, then retried the same way.

`run()` ends only by cancellation or by raising JoinRefused / NodeNameTaken. Timers use the injected `Clock`.
Must not: run anything or touch the disk beyond the node's identity (`identity.py`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc

from runyard.clock import Clock, wait_event
from runyard.config import is_loopback
from runyard.errors import UsageError
from runyard.errors import CertificateError
from agent.config import AgentConfig
from agent.errors import JoinRefused, NodeNameTaken
from agent.identity import NodeIdentity
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
_FATAL = (JoinRefused, NodeNameTaken, UsageError)
_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 20_000)]

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


def _no_environments() -> list[str]:
    return []


def _build_nothing(request: pb.BuildEnvironment) -> None:
    log.warning("the head asked for an environment this agent cannot build", extra={"env_hash": request.env_hash})


class HeadLink:
    def __init__(
        self, *, config: AgentConfig, outbox: Outbox, capacity: pb.Capacity, clock: Clock,
        live_attempts: Callable[[], set[tuple[str, int]]],
        on_assign: Callable[[pb.Assignment], None], on_stop: Callable[[str, int, Reason], None],
        env_hashes: Callable[[], list[str]] = _no_environments,
        on_build: Callable[[pb.BuildEnvironment], None] = _build_nothing,
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._capacity = capacity
        self._clock = clock
        self._live_attempts = live_attempts
        self._on_assign = on_assign
        self._on_stop = on_stop
        self._env_hashes = env_hashes
        self._on_build = on_build
        self._told_env_hashes: list[str] | None = None   # what this stream's head was last told; None: nothing yet
        self._identity = NodeIdentity(config)
        self._head_full = False                    # inside an episode of RESOURCE_EXHAUSTED on Connect
        self._awaiting_approval = False
        self.connected = asyncio.Event()
        self.last_contact = clock.now()            # when the head last said anything, on `clock`
        self._ca: bytes | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.NodeAgentStub | None = None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def environments_changed(self) -> None:
        """The node's built environments changed: tell the head at once (a heartbeat with their hashes)."""
        self._outbox.changed.set()

    def _trusted_ca(self) -> bytes:
        if self._ca is None:
            self._ca = self._identity.ca()
        return self._ca

    async def _node_stub(self) -> pb_grpc.NodeAgentStub:
        """The stub of the node port over mTLS with this node's certificate; enrolls first if it has none."""
        if self._stub is not None:
            return self._stub
        ca = await asyncio.to_thread(self._trusted_ca)
        certificate = self._identity.certificate()
        if certificate is None:
            certificate = await self._join(ca)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=self._identity.key_pem(),
                                                   certificate_chain=certificate)
        self._channel = grpc.aio.secure_channel(self._config.node_address(), credentials, options=_OPTIONS)
        self._stub = pb_grpc.NodeAgentStub(self._channel)
        return self._stub

    async def _forget_certificate(self) -> None:
        self._identity.forget_certificate()
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def _join(self, ca: bytes) -> bytes:
        secret = self._config.join_secret()
        if not secret:
            raise JoinRefused("this node is not enrolled and has no join token: set join_token_file in the agent "
                              "config (an admin creates one with `runyard node token create`)")
        csr = await asyncio.to_thread(self._identity.csr)     # a process of its own (`keytool`)
        if self._config.insecure_plaintext:
            if not is_loopback(self._config.head_address):
                raise UsageError("insecure_plaintext is for a head on loopback only")
            channel = grpc.aio.insecure_channel(self._config.head_address, options=_OPTIONS)
        else:
            channel = grpc.aio.secure_channel(self._config.head_address, grpc.ssl_channel_credentials(ca),
                                              options=_OPTIONS)
        async with channel:
            try:
                reply = await pb_grpc.NodeAgentStub(channel).Join(
                    pb.JoinRequest(name=self._config.name, cluster=self._config.cluster, labels=self._config.labels,
                                   capacity=self._capacity, csr=csr),
                    metadata=(("authorization", f"Bearer {secret}"),), timeout=10,
                )
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.PERMISSION_DENIED):
                    raise JoinRefused(f"the head refused to enroll this node: {err.details()}") from None
                if err.code() == grpc.StatusCode.ALREADY_EXISTS:
                    raise NodeNameTaken(err.details() or f"node name {self._config.name!r} is taken") from None
                raise
        self._identity.save_certificate(reply.certificate)
        log.info("enrolled in the cluster", extra={"node_id": reply.node_id, "head": self._config.head_address})
        return reply.certificate

    async def run(self) -> None:
        """Keep a Connect stream open until cancelled; raises JoinRefused or NodeNameTaken."""
        backoff_s = _FIRST_BACKOFF_S
        while True:
            cap_s = self._config.reconnect_max_s
            try:
                await self._stream(await self._node_stub())
            except grpc.aio.AioRpcError as err:
                if await self._on_rpc_error(err):
                    cap_s = max(cap_s, self._config.head_full_retry_max_s)
            except CertificateError as err:
                log.warning("cannot read the head's certificate; retrying", extra={"error": str(err)})
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

    async def _on_rpc_error(self, err: grpc.aio.AioRpcError) -> bool:
        """Act on a failed Connect; True while the head is out of space or this node waits for approval (the
        longer back-off). Raises what must end the agent."""
        code = err.code()
        if code == grpc.StatusCode.ALREADY_EXISTS:
            raise NodeNameTaken(err.details() or f"node name {self._config.name!r} is taken")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            if not self._head_full:
                self._head_full = True
                log.warning("head out of space; keeping the unacknowledged reports and retrying",
                            extra={"unacknowledged": len(self._outbox), "details": err.details()})
            return True
        if code == grpc.StatusCode.PERMISSION_DENIED:
            if not self._awaiting_approval:
                self._awaiting_approval = True
                log.warning("the head does not let this node act yet; retrying", extra={"details": err.details()})
            return True
        if code == grpc.StatusCode.UNAUTHENTICATED:
            log.warning("the head no longer accepts this node's certificate; enrolling again",
                        extra={"details": err.details()})
            await self._forget_certificate()
        elif code not in _RETRYABLE:
            log.error("connect failed", extra={"code": code.name, "details": err.details()})
        else:
            log.debug("head unreachable", extra={"code": code.name})
        return False

    async def _stream(self, stub: pb_grpc.NodeAgentStub) -> None:
        ended = asyncio.Event()
        call = stub.Connect(self._requests(ended))
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
            self._awaiting_approval = False
            self._outbox.ack(message.ack.msg_seq)
            if self._head_full:
                self._head_full = False
                log.info("head has space again; delivery resumed", extra={"unacknowledged": len(self._outbox)})
        elif kind == "assign":
            self._on_assign(message.assign)
        elif kind == "build_env":
            self._on_build(message.build_env)
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
            capacity = pb.Capacity()
            capacity.CopyFrom(self._capacity)
            self._told_env_hashes = self._env_hashes()
            capacity.env_hashes.extend(self._told_env_hashes)
            hello = pb.Hello(capacity=capacity, running=[pb.RunHandle(run_id=r, attempt=a) for r, a in running])
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
                hashes = self._env_hashes()
                if hashes != self._told_env_hashes:
                    self._told_env_hashes = hashes
                    yield pb.AgentMessage(msg_seq=self._outbox.next_seq(),
                                          heartbeat=pb.Heartbeat(env_hashes=hashes))
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
            stub = await self._node_stub()
            with open(dest, "wb") as f:
                async for chunk in stub.FetchSnapshot(pb.FetchSnapshotRequest(run_id=run_id, attempt=attempt)):
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
            stub = await self._node_stub()
            await stub.UploadOutputs(chunks())
        await self._retry(f"outputs of {run_id}", once)
