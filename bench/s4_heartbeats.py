"""S4: heartbeats from N simulated agents over the real protocol, every 5 s (goal: 5,000 agents, p99 <= 100 ms,
head CPU <= 50 % of one core).

One generator process runs every agent as a coroutine, as the real agent (agent/link.py) does it: enroll with `Join`
on the head's client port (TLS; a CSR of its own ECDSA P-256 key, made before the storm starts, and one join token
with enough uses for every agent), then open one Connect stream (Hello, then a heartbeat every interval, spread
evenly) on the node port over mTLS with the certificate `Join` returned. gRPC cannot share a connection between
channels with different client certificates, and each certificate names one node, so every simulated agent has a
TCP and TLS connection of its own, as real agents do: N connections to the head (there were 100 shared plaintext
connections before the node port required mTLS). The Joins share a few TLS channels (no client certificate there).
The connections use the agent's keepalive (20 s). Like the real agent, a simulated agent whose Join or Connect
fails retries with jittered exponential backoff (0.05 s doubling to 2 s; Join with a 10 s deadline); every retry is
counted by phase and status code and reported, so that a connect storm the head sheds shows up instead of silently
losing the agents (grpc core cancels calls beyond its pending-request backlog before the head's code sees them).

A heartbeat's latency is the time until the head's Ack for it arrives. Three windows of 20 s follow each other; a
window counts the heartbeats sent inside it (acks waited for a little after the last), the ones never answered are
reported, and the figures are the medians over the windows with their min and max. One pause of the head (a full
garbage collection of a head holding thousands of connections was seen to take 0.5-0.9 s) delays a second's worth
of heartbeats, more than 1 % of a window, so one window's p99 says mostly whether such a pause fell inside it.
Before the windows the generator freezes its heap (gc.freeze): otherwise its own full collections over thousands of
channels stall its event loop for several hundred ms, which would read as the head's latency; its collections during the
windows are reported.

The head runs as its own process, pinned to core 0, the generator to core 1 when the machine has two. Limits
measured in the same run, with a bare grpc.aio echo stream server in its own process on the head's core and this
generator on the other, at the same number of ping-pongs per second (one window of up to 10 s):
- the same shape as ours: N streams, each on its own mTLS connection, slots spread evenly; ours is reported as a
  ratio to it (what the transport alone costs at this load);
- the shape before mTLS: 50 streams sharing one plaintext connection; the difference, in latency and in the echo
  server's CPU, is what one mTLS connection per agent costs the transport.
A limit stream that fails before it opens (thousands opening at once make grpc fail some with INTERNAL) is opened
again with the simulated agents' back-off; failures are counted and reported, as ours are.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos import runyard_pb2 as pb  # noqa: E402
from protos import runyard_pb2_grpc as pb_grpc  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import row  # noqa: E402
from runyard import pki  # noqa: E402
from testbed.harness import Head  # noqa: E402

JOIN_CHANNELS = 8        # TLS channels to the client port that the Joins share (no client certificate there)
MAX_JOIN_USES = 10_000   # the head's cap on one join token's uses (scheduler/enrollment.py)
KEEPALIVE = [("grpc.keepalive_time_ms", 20_000)]   # as agent/link.py
LEGACY_STREAMS = 50      # the limit's shape before mTLS: this many streams on one plaintext connection
OPEN_ATTEMPTS = 8        # the limit opens a failed stream again this many times at most


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


BACKOFF_S, BACKOFF_MAX_S, JOIN_TIMEOUT_S = 0.05, 2.0, 10.0  # as agent/link.py with its default reconnect_max_s


@dataclass(frozen=True, slots=True)
class Identity:
    """A simulated agent's key and CSR, made before the storm, as a real agent makes them at its first start."""
    name: str
    key_pem: bytes
    csr_pem: bytes


def identities(agents: int) -> tuple[list[Identity], float]:
    """One ECDSA P-256 key and CSR per simulated agent; and the seconds it took."""
    from cryptography.hazmat.primitives import serialization

    t0 = time.perf_counter()
    found = []
    for i in range(agents):
        key = pki.new_key()
        name = f"sim-{i:05d}"
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        found.append(Identity(name, key_pem, pki.node_csr(name, key)))
    return found, time.perf_counter() - t0


class GcPauses:
    """This process's own garbage-collection pauses while installed: the generator is not what is measured, but a
    pause of its event loop delays every ack it reads and would show up as heartbeat latency."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif info["generation"] == 2:
            self.pauses_ms.append((time.perf_counter() - self._started) * 1000)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, object]:
        return {"full_collections": len(self.pauses_ms),
                "longest_ms": round(max(self.pauses_ms), 1) if self.pauses_ms else None}


def freeze_heap() -> int:
    """Collect once, then move every object alive into the permanent generation (gc.freeze): the thousands of
    channels, calls and coroutines set up so far are then never scanned again, so a full collection of the
    generator no longer stalls its event loop for hundreds of milliseconds. Returns the objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class Fleet:
    """What the simulated agents observed, shared by all of them (one event loop, no locks needed)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.window = -1                         # the window open now, or -1
        self.latencies: dict[int, list[float]] = {}  # window -> its heartbeats' times until their ack
        self.sent: dict[int, int] = {}           # window -> heartbeats sent inside it
        self.enrolled_at: list[float] = []       # when each Join returned a certificate, from t0
        self.connected: set[str] = set()         # agents whose hello the head acknowledged at least once
        self.connected_at: list[float] = []      # when each agent was first acknowledged, from t0
        self.retries: dict[str, int] = {}        # "join:CANCELLED" -> count
        self.last_error: dict[str, str] = {}     # agent -> its latest failure, while it is not connected
        self.reconnects = 0                      # streams opened again after an agent had been connected
        self.retried: set[str] = set()           # agents that failed at least once
        self.channels_opened = 0                 # mTLS channels to the node port, one per (re)enrollment

    def failed(self, name: str, phase: str, err: grpc.aio.AioRpcError) -> None:
        key = f"{phase}:{err.code().name}"
        self.retries[key] = self.retries.get(key, 0) + 1
        self.last_error[name] = f"AioRpcError: {err.code().name} ({phase})"
        self.retried.add(name)


async def agent(join_stub: pb_grpc.NodeAgentStub, node_address: str, ca_pem: bytes, join_token: str, me: Identity,
                offset_s: float, interval_s: float, until: float, fleet: Fleet) -> None:
    channel: grpc.aio.Channel | None = None
    stub: pb_grpc.NodeAgentStub | None = None
    backoff_s = BACKOFF_S
    try:
        while time.monotonic() < until:
            phase = "join" if stub is None else "connect"
            try:
                if stub is None:
                    reply = await join_stub.Join(
                        pb.JoinRequest(name=me.name, capacity=pb.Capacity(cpus=8, memory_bytes=32 << 30),
                                       csr=me.csr_pem),
                        metadata=(("authorization", f"Bearer {join_token}"),), timeout=JOIN_TIMEOUT_S)
                    fleet.enrolled_at.append(time.monotonic() - fleet.t0)
                    # Its own certificate, so its own connection: gRPC shares no subchannel across credentials.
                    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=me.key_pem,
                                                               certificate_chain=reply.certificate)
                    channel = grpc.aio.secure_channel(node_address, credentials, options=KEEPALIVE)
                    fleet.channels_opened += 1
                    stub = pb_grpc.NodeAgentStub(channel)
                    phase = "connect"
                if me.name in fleet.connected:
                    fleet.reconnects += 1
                await stream(stub, me.name, offset_s, interval_s, until, fleet)
                backoff_s = BACKOFF_S
            except grpc.aio.AioRpcError as err:
                fleet.failed(me.name, phase, err)
                if phase == "connect" and err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    stub = None  # the real agent forgets its certificate and enrolls again
                    if channel is not None:
                        await channel.close()
                        channel = None
            if time.monotonic() >= until:
                return
            await asyncio.sleep(backoff_s * (0.5 + random.random()))
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
    finally:
        if channel is not None:
            await channel.close()


async def stream(stub: pb_grpc.NodeAgentStub, name: str, offset_s: float, interval_s: float,
                 until: float, fleet: Fleet) -> None:
    """One Connect stream: hello, then a heartbeat on this agent's slot of every interval, until `until`."""
    sent: dict[int, tuple[float, int]] = {}  # seq -> (sent at, the window it was sent in or -1)
    queue: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while (message := await queue.get()) is not None:
            yield message

    call = stub.Connect(requests())  # the node is who its client certificate says: no token
    await queue.put(pb.AgentMessage(msg_seq=1, hello=pb.Hello(capacity=pb.Capacity(cpus=8))))

    async def beat() -> None:
        # Slots on a fixed grid from the fleet's start, so the load stays spread evenly across reconnects.
        slot = fleet.t0 + offset_s
        now = time.monotonic()
        if slot < now:
            slot += ((now - slot) // interval_s + 1) * interval_s
        seq = 1
        while slot < until:
            await asyncio.sleep(slot - time.monotonic())
            seq += 1
            window = fleet.window
            if window >= 0:
                fleet.sent[window] = fleet.sent.get(window, 0) + 1
            sent[seq] = (time.perf_counter(), window)
            await queue.put(pb.AgentMessage(msg_seq=seq, heartbeat=pb.Heartbeat(sent_at=time.time())))
            slot += interval_s
        await queue.put(None)

    beater = asyncio.create_task(beat())
    try:
        async for message in call:
            if not message.HasField("ack"):
                continue
            if message.ack.msg_seq == 1 and name not in fleet.connected:  # the head acknowledged our hello
                fleet.connected.add(name)
                fleet.connected_at.append(time.monotonic() - fleet.t0)
                fleet.last_error.pop(name, None)
            elif message.ack.msg_seq in sent:
                at, window = sent.pop(message.ack.msg_seq)
                if window >= 0:
                    fleet.latencies.setdefault(window, []).append(time.perf_counter() - at)
        await beater
    finally:
        beater.cancel()
        call.cancel()


async def generate(config: object, node_address: str, join_token: str, fleet_ids: list[Identity], interval_s: float,
                   duration_s: float, windows: int, head_pid: int) -> dict[str, object]:
    agents = len(fleet_ids)
    # A distinct channel argument gives each Join channel its own connection.
    join_channels = [common.aio_channel(config, [("grpc.use_local_subchannel_pool", 1), ("runyard.bench.join", i)])
                     for i in range(JOIN_CHANNELS)]
    join_stubs = [pb_grpc.NodeAgentStub(c) for c in join_channels]
    ca_pem = config.ca_pem  # type: ignore[attr-defined]
    fleet = Fleet()
    warmup_s = interval_s * 2
    until = time.monotonic() + warmup_s + windows * duration_s + 60  # generous: joins of thousands take a while
    tasks = [asyncio.create_task(agent(join_stubs[i % JOIN_CHANNELS], node_address, ca_pem, join_token, me,
                                       interval_s * i / agents, interval_s, until, fleet))
             for i, me in enumerate(fleet_ids)]
    head = psutil.Process(head_pid)
    me_proc = psutil.Process()
    storm_head_cpu0, storm_my_cpu0 = sum(head.cpu_times()[:2]), sum(me_proc.cpu_times()[:2])
    # Wait until every agent is connected, or until no more connect for 10 s (then the window measures those).
    last, steady_since = -1, time.monotonic()
    while len(fleet.connected) < agents and time.monotonic() - steady_since < 10:
        if len(fleet.connected) != last:
            last, steady_since = len(fleet.connected), time.monotonic()
        await asyncio.sleep(0.2)
    storm_head_cpu = sum(head.cpu_times()[:2]) - storm_head_cpu0
    storm_my_cpu = sum(me_proc.cpu_times()[:2]) - storm_my_cpu0
    retries_to_connect = dict(fleet.retries)
    frozen = freeze_heap()
    await asyncio.sleep(warmup_s)  # every agent beats at least twice before the window opens
    connected0, reconnects0 = len(fleet.connected), fleet.reconnects
    cpu: list[tuple[float, float]] = []  # per window: head's and generator's share of one core
    with GcPauses() as pauses:
        for window in range(windows):  # back to back; each heartbeat counts in the window it was sent in
            head_cpu0, my_cpu0, t0 = sum(head.cpu_times()[:2]), sum(me_proc.cpu_times()[:2]), time.monotonic()
            fleet.window = window
            await asyncio.sleep(duration_s)
            fleet.window = -1
            wall = time.monotonic() - t0
            cpu.append(((sum(head.cpu_times()[:2]) - head_cpu0) / wall,
                        (sum(me_proc.cpu_times()[:2]) - my_cpu0) / wall))
    await asyncio.sleep(min(interval_s, 5.0))  # acks of the last heartbeats; later ones count as lost
    # Counted after the windows: scanning thousands of sockets blocks this event loop for a while.
    head_connections = _tcp_connections(head_pid)
    per_window = []
    for window in range(windows):
        lat = fleet.latencies.get(window, [])
        per_window.append({"heartbeats": len(lat), "unanswered": fleet.sent.get(window, 0) - len(lat),
                           "p50_ms": round(pct(lat, 0.50) * 1000, 2), "p99_ms": round(pct(lat, 0.99) * 1000, 2),
                           "max_ms": round(max(lat) * 1000, 2) if lat else None,
                           "head_cpu_share_of_one_core": round(cpu[window][0], 3),
                           "generator_cpu_share_of_one_core": round(cpu[window][1], 3)})
    pooled = [x for lat in fleet.latencies.values() for x in lat]
    connected = len(fleet.connected)
    failures: dict[str, int] = {}  # agents never acknowledged, by their latest error
    for name, error in fleet.last_error.items():
        if name not in fleet.connected:
            failures[error] = failures.get(error, 0) + 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in join_channels:
        await channel.close()
    gc.unfreeze()
    arrived = sorted(fleet.connected_at)
    enrolled = sorted(fleet.enrolled_at)
    p99s = [w["p99_ms"] for w in per_window]
    return {"connected": connected, "failed_agents": failures, "complete": connected == agents,
            "heartbeats": len(pooled), "expected": int(connected * windows * duration_s / interval_s),
            "p50_ms": statistics.median(w["p50_ms"] for w in per_window),
            "p99_ms": statistics.median(p99s), "p99_ms_min": min(p99s), "p99_ms_max": max(p99s),
            "p99_ms_pooled": round(pct(pooled, 0.99) * 1000, 2),
            "max_ms": round(max(pooled) * 1000, 2) if pooled else None,
            "head_cpu_share_of_one_core": statistics.median(w["head_cpu_share_of_one_core"] for w in per_window),
            "generator_cpu_share_of_one_core": statistics.median(
                w["generator_cpu_share_of_one_core"] for w in per_window),
            "windows": per_window,
            "figures_are": f"medians over {windows} windows of {duration_s:g} s back to back; min, max and pooled "
                           "beside them",
            "generator_gc": {"objects_frozen_before_windows": frozen, "in_windows": pauses.summary()},
            "connections": {
                "node_port": "one mTLS channel per simulated agent, with its own certificate (gRPC shares no "
                             "connection across client certificates): one TCP and TLS connection each",
                "node_port_channels_opened": fleet.channels_opened,
                "join": f"{JOIN_CHANNELS} TLS channels to the client port, shared by all Joins",
                "head_tcp_connections_after_windows": head_connections,
            },
            "connect_storm": {
                "retries_by_phase_and_code": retries_to_connect,
                "agents_that_retried": len(fleet.retried),
                "all_enrolled_after_s": round(enrolled[-1], 2) if len(enrolled) >= agents else None,
                "all_connected_after_s": round(arrived[-1], 2) if connected == agents and arrived else None,
                "p50_connected_after_s": round(pct(arrived, 0.5), 2) if arrived else None,
                "head_cpu_s": round(storm_head_cpu, 2), "generator_cpu_s": round(storm_my_cpu, 2),
                "connected_during_windows": connected - connected0,
                "reconnects_during_windows": fleet.reconnects - reconnects0,
            },
            "heartbeats_sent_in_windows": sum(fleet.sent.values()),
            "heartbeats_unanswered": sum(fleet.sent.values()) - len(pooled)}


def _tcp_connections(pid: int) -> int | None:
    try:
        return len(psutil.Process(pid).net_connections(kind="tcp"))
    except (psutil.Error, AttributeError):
        return None


# --- the transport limit: a bare echo stream server in its own process -------------------------------------------

def serve_echo(ready_file: str) -> None:
    """Echo every AgentMessage as an Ack, on a plaintext port and an mTLS port (client certificate required, as the
    head's node port); the ports and the peer CA go to `ready_file` as JSON."""

    class Echo(pb_grpc.NodeAgentServicer):
        async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
            async for message in request_iterator:
                yield pb.HeadMessage(ack=pb.Ack(msg_seq=message.msg_seq))

    async def main() -> None:
        tls = common.peer_tls(Path(ready_file).parent)
        server = grpc.aio.server(options=[("grpc.keepalive_permit_without_calls", 1),
                                          ("grpc.http2.min_ping_interval_without_data_ms", 5_000)])
        pb_grpc.add_NodeAgentServicer_to_server(Echo(), server)
        ports = {
            "plaintext": server.add_insecure_port("127.0.0.1:0"),
            "mtls": server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
                [(tls["key"].read_bytes(), tls["cert"].read_bytes())], root_certificates=tls["ca"].read_bytes(),
                require_client_auth=True)),
        }
        await server.start()
        tmp = ready_file + ".tmp"
        Path(tmp).write_text(json.dumps({**ports, "dir": str(Path(ready_file).parent)}))
        os.replace(tmp, ready_file)
        await server.wait_for_termination()

    import uvloop
    uvloop.run(main())


def start_echo(directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    directory.mkdir(parents=True, exist_ok=True)
    ready = directory / "echo.json"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(ready)], stdout=subprocess.DEVNULL,
                            stderr=open(directory / "echo.log", "wb"))
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"echo server did not start: {(directory / 'echo.log').read_text()[-2000:]}")
        time.sleep(0.02)
    return proc, json.loads(ready.read_text())


async def transport_limit(address: str, credentials: grpc.ChannelCredentials | None, streams: int,
                          connections: int, rate_per_s: float, seconds: float, server_pid: int) -> dict[str, object]:
    """`streams` echo streams spread over `connections` connections (mTLS when `credentials`), slots spread evenly,
    `rate_per_s` messages in all; latency until each echo. Connections and streams are open before the clock
    starts, and the first interval is not measured."""
    options = [("grpc.use_local_subchannel_pool", 1), *KEEPALIVE]
    channels = [grpc.aio.secure_channel(address, credentials, options=[*options, ("runyard.bench.connection", i)])
                if credentials is not None else
                grpc.aio.insecure_channel(address, options=[*options, ("runyard.bench.connection", i)])
                for i in range(connections)]
    t_connect = time.perf_counter()
    await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 60) for c in channels))
    connect_s = time.perf_counter() - t_connect
    stubs = [pb_grpc.NodeAgentStub(c) for c in channels]
    latencies: list[float] = []
    interval_s = streams / rate_per_s
    settled = 0                       # streams open, or failed before they opened
    all_open = asyncio.Event()
    grid: list[float] = []            # the slots' origin, set once every stream has settled
    failed: dict[str, int] = {}       # "open:INTERNAL" (retried) or "stream:INTERNAL" (after it opened) -> count
    gave_up: list[int] = []           # streams that never opened

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == streams:
            grid.append(time.monotonic())
            all_open.set()

    async def session(index: int, state: dict[str, bool]) -> None:
        """One stream until its last slot; state["open"] once its first message came back."""
        queue: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        sent: dict[int, tuple[float, bool]] = {}

        async def requests():  # type: ignore[no-untyped-def]
            while (m := await queue.get()) is not None:
                yield m
        call = stubs[index % connections].Connect(requests())

        async def feed() -> None:
            # First one message to open the stream (not measured); then slots on a grid shared by every stream,
            # from when all are open: one interval of warm-up, then `seconds` measured.
            sent[0] = (time.perf_counter(), False)
            await queue.put(pb.AgentMessage(msg_seq=0, heartbeat=pb.Heartbeat()))
            await all_open.wait()
            start = grid[0] + interval_s
            end = start + seconds
            slot = grid[0] + interval_s * index / streams
            seq = 0
            while slot < end:
                await asyncio.sleep(slot - time.monotonic())
                seq += 1
                sent[seq] = (time.perf_counter(), slot >= start)
                await queue.put(pb.AgentMessage(msg_seq=seq, heartbeat=pb.Heartbeat()))
                slot += interval_s
            await queue.put(None)
        feeder = asyncio.create_task(feed())
        try:
            async for reply in call:
                at, counted = sent.pop(reply.ack.msg_seq)
                if reply.ack.msg_seq == 0:
                    state["open"] = True
                    settle()
                elif counted:
                    latencies.append(time.perf_counter() - at)
            await feeder
        finally:
            feeder.cancel()
            call.cancel()

    async def one(index: int) -> None:
        """A stream that fails before it opens is opened again with the simulated agents' back-off (a burst of
        thousands of stream opens at once makes some fail); one that fails later is counted and not replaced."""
        state = {"open": False}
        backoff_s = BACKOFF_S
        for _ in range(OPEN_ATTEMPTS):
            try:
                await session(index, state)
                return
            except grpc.aio.AioRpcError as err:
                key = f"{'stream' if state['open'] else 'open'}:{err.code().name}"
                failed[key] = failed.get(key, 0) + 1
                if state["open"]:
                    return
            await asyncio.sleep(backoff_s * (0.5 + random.random()))
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
        gave_up.append(index)
        settle()

    t_open = time.perf_counter()
    runs = asyncio.gather(*(one(i) for i in range(streams)))
    await all_open.wait()
    open_s = time.perf_counter() - t_open
    frozen = freeze_heap()  # inside the unmeasured first interval, as ours is frozen before its window
    server = psutil.Process(server_pid)
    server_cpu0, t0 = sum(server.cpu_times()[:2]), time.monotonic()
    with GcPauses() as pauses:
        await runs
    server_cpu = (sum(server.cpu_times()[:2]) - server_cpu0) / (time.monotonic() - t0)
    gc.unfreeze()
    for channel in channels:
        await channel.close()
    return {"streams": streams, "connections": connections, "tls": credentials is not None,
            "connect_all_s": round(connect_s, 2), "open_all_streams_s": round(open_s, 2),
            "server_cpu_share_of_one_core": round(server_cpu, 3),
            "generator_gc": {"objects_frozen_before_window": frozen, "in_window": pauses.summary()},
            "p50_ms": round(pct(latencies, 0.5) * 1000, 3), "p99_ms": round(pct(latencies, 0.99) * 1000, 3),
            "messages": len(latencies), "expected": int(streams * seconds / interval_s),
            "failures_by_phase_and_code": failed,
            "streams_never_opened": len(gave_up)}


def limits(directory: Path, pinned: bool, agents: int, rate_per_s: float, seconds: float) -> dict[str, object]:
    """Both limit shapes against one echo server process, pinned as the head was."""
    proc, found = start_echo(directory)
    try:
        if pinned:
            common.pin(proc.pid, [0])
        tls = Path(found["dir"])
        credentials = grpc.ssl_channel_credentials(root_certificates=(tls / "peer-ca.crt").read_bytes(),
                                                   private_key=(tls / "client.key").read_bytes(),
                                                   certificate_chain=(tls / "client.crt").read_bytes())
        same = asyncio.run(transport_limit(f"127.0.0.1:{found['mtls']}", credentials, agents, agents, rate_per_s,
                                           seconds, proc.pid))
        legacy = asyncio.run(transport_limit(f"127.0.0.1:{found['plaintext']}", None, LEGACY_STREAMS, 1, rate_per_s,
                                             seconds, proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"same_shape_mtls": same, "before_mtls_shared_plaintext": legacy}


# --- main ---------------------------------------------------------------------------------------------------------

def enough_files(agents: int) -> dict[str, object]:
    """Raise this process's open-file limit (the head inherits it) to cover one connection per agent, both ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * agents + 1024
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return {"soft": soft, "hard": hard, "wanted": wanted, "enough": soft >= wanted}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per window")
    parser.add_argument("--windows", type=int, default=3, help="measured windows, back to back")
    parser.add_argument("--serve-echo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return
    common.exit_on_sigterm()
    pinned = bool(os.cpu_count() and os.cpu_count() >= 2)  # type: ignore[operator]
    files = enough_files(args.agents)
    fleet_ids, keys_s = identities(args.agents)
    common.log(f"S4: {args.agents} keys and CSRs in {keys_s:.2f} s")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        head = Head(Path(tmp) / "head", Path(tmp) / "head.log",
                    {"down_after_s": 3600, "disconnected_after_s": 600, "sqlite_synchronous": "NORMAL"})
        head.start()
        try:
            assert head.proc is not None
            if pinned:
                common.pin(head.proc.pid, [0])
                common.pin_self([1])
            config = head.client_config()
            join_token = head.join_token(uses=min(MAX_JOIN_USES, 2 * args.agents))  # room for re-enrollments
            result = asyncio.run(generate(config, head.node_address, join_token, fleet_ids, args.interval,
                                          args.duration, args.windows, head.proc.pid))
            head_rss = psutil.Process(head.proc.pid).memory_info().rss
        finally:
            head.stop()
        common.log(f"S4: p99 {result['p99_ms']} ms, {result['connected']} connected; measuring the transport limits")
        limit = limits(Path(tmp) / "echo", pinned, args.agents, args.agents / args.interval, min(args.duration, 10.0))
    same, legacy = limit["same_shape_mtls"], limit["before_mtls_shared_plaintext"]
    p99 = result["p99_ms"]
    rows = [
        row(f"heartbeat p99 (median of {args.windows} windows; max {result['p99_ms_max']:g} ms), {result['connected']} "
            f"of {args.agents} agents connected, one mTLS connection each", p99, "ms", 100, "<=",
            peer="bare grpc.aio echo, same rate and connections",
            peer_ratio=round(p99 / same["p99_ms"], 2) if isinstance(p99, float) and same["p99_ms"] else None),
        row("head CPU, share of one core", result["head_cpu_share_of_one_core"], "core", 0.5, "<=", digits=3),
    ]
    if not result["complete"]:  # the goal is about all N agents: fewer connected cannot meet it
        for entry in rows:
            entry["meets"] = False
    common.emit({
        "scenario": "S4", "what": f"{args.agents} simulated agents, heartbeat every {args.interval:g} s, "
                                  "each on its own mTLS connection",
        "ours": result, "limit_bare_grpc_echo_same_rate": limit, "head_rss_mb": round(head_rss / 2**20, 1),
        "transport_cost": {
            "echo_p99_ms_one_mtls_connection_per_stream": same["p99_ms"],
            f"echo_p99_ms_{LEGACY_STREAMS}_streams_one_plaintext_connection": legacy["p99_ms"],
            "ratio": round(same["p99_ms"] / legacy["p99_ms"], 2) if legacy["p99_ms"] else None,
            "echo_server_cpu_share_one_mtls_connection_per_stream": same["server_cpu_share_of_one_core"],
            f"echo_server_cpu_share_{LEGACY_STREAMS}_streams_one_plaintext_connection":
                legacy["server_cpu_share_of_one_core"],
            "note": "what one mTLS connection per agent costs the bare transport, against the shape the simulated "
                    "agents had when the node port took bearer tokens",
        },
        "keys": {"per_agent": True, "made_in_s": round(keys_s, 2),
                 "how": "one ECDSA P-256 key and CSR per simulated agent, before the storm; not counted"},
        "open_files": files,
        "goal": {"p99_ms": 100, "head_cpu_share_of_one_core": 0.5},
        "ratio_p99_to_goal": round(p99 / 100, 3) if isinstance(p99, float) else None,
        "ratio_cpu_to_goal": round(result["head_cpu_share_of_one_core"] / 0.5, 3),  # type: ignore[operator]
        "pinned_head_core0_generator_core1": pinned,
        "generator_saturated": result["generator_cpu_share_of_one_core"] > 0.9,  # type: ignore[operator]
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "table": rows,
    })


if __name__ == "__main__":
    main()
