"""S4: heartbeats from N simulated agents over the real protocol, every 5 s (goal: 5,000 agents, p99 <= 100 ms,
head CPU <= 50 % of one core).

One generator process runs every agent as a coroutine: Join, then one Connect stream (Hello, then a heartbeat
every interval, spread evenly), spread over several HTTP/2 connections. A heartbeat's latency is the time until
the head's Ack for it arrives; the window counts the heartbeats sent inside it (acks waited for a little after it),
and the ones never answered are reported. Like the real agent (agent/link.py), a simulated agent whose Join or Connect fails
retries with jittered exponential backoff (0.05 s doubling to 2 s; Join with a 10 s deadline); every retry is counted
by phase and status code and reported, so that a connect storm the head sheds shows up instead of silently losing
the agents (grpc core cancels calls beyond its pending-request backlog, `grpc.server.max_pending_requests`, before
the head's code sees them). The head runs as its own process, pinned to core 0, the generator to core 1 when
the machine has two. Limit measured in the same run: the same number of bidi ping-pongs per second against a
bare grpc.aio echo stream, i.e. what the transport alone costs at this load. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos import runyard_pb2 as pb  # noqa: E402
from protos import runyard_pb2_grpc as pb_grpc  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row  # noqa: E402
from testbed.harness import Head  # noqa: E402

CHANNELS = 100  # HTTP/2 connections; ~50 streams each, well under per-connection stream caps


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


BACKOFF_S, BACKOFF_MAX_S, JOIN_TIMEOUT_S = 0.05, 2.0, 10.0  # as agent/link.py with its default reconnect_max_s


class Fleet:
    """What the simulated agents observed, shared by all of them (one event loop, no locks needed)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.latencies: list[float] = []         # heartbeats sent inside the window, until their ack
        self.measuring = asyncio.Event()         # set while the window is open
        self.sent_in_window = 0
        self.connected: set[str] = set()         # agents whose hello the head acknowledged at least once
        self.connected_at: list[float] = []      # when each agent was first acknowledged, from t0
        self.retries: dict[str, int] = {}        # "join:CANCELLED" -> count
        self.last_error: dict[str, str] = {}     # agent -> its latest failure, while it is not connected
        self.reconnects = 0                      # streams opened again after an agent had been connected
        self.retried: set[str] = set()           # agents that failed at least once

    def failed(self, name: str, phase: str, err: grpc.aio.AioRpcError) -> None:
        key = f"{phase}:{err.code().name}"
        self.retries[key] = self.retries.get(key, 0) + 1
        self.last_error[name] = f"AioRpcError: {err.code().name} ({phase})"
        self.retried.add(name)


async def agent(stub: pb_grpc.NodeAgentStub, join_token: str, name: str, offset_s: float, interval_s: float,
                until: float, fleet: Fleet) -> None:
    token = ""
    backoff_s = BACKOFF_S
    while time.monotonic() < until:
        phase = "join" if not token else "connect"
        try:
            if not token:
                reply = await stub.Join(
                    pb.JoinRequest(name=name, capacity=pb.Capacity(cpus=8, memory_bytes=32 << 30)),
                    metadata=(("authorization", f"Bearer {join_token}"),), timeout=JOIN_TIMEOUT_S)
                token = reply.node_token
                phase = "connect"
            if name in fleet.connected:
                fleet.reconnects += 1
            await stream(stub, token, name, offset_s, interval_s, until, fleet)
            backoff_s = BACKOFF_S
        except grpc.aio.AioRpcError as err:
            fleet.failed(name, phase, err)
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                token = ""  # the real agent joins again
        if time.monotonic() >= until:
            return
        await asyncio.sleep(backoff_s * (0.5 + random.random()))
        backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)


async def stream(stub: pb_grpc.NodeAgentStub, token: str, name: str, offset_s: float, interval_s: float,
                 until: float, fleet: Fleet) -> None:
    """One Connect stream: hello, then a heartbeat on this agent's slot of every interval, until `until`."""
    sent: dict[int, tuple[float, bool]] = {}  # seq -> (sent at, sent inside the window)
    queue: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while (message := await queue.get()) is not None:
            yield message

    call = stub.Connect(requests(), metadata=(("authorization", f"Bearer {token}"),))
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
            in_window = fleet.measuring.is_set()
            fleet.sent_in_window += in_window
            sent[seq] = (time.perf_counter(), in_window)
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
                at, in_window = sent.pop(message.ack.msg_seq)
                if in_window:
                    fleet.latencies.append(time.perf_counter() - at)
        await beater
    finally:
        beater.cancel()


async def generate(address: str, join_token: str, agents: int, interval_s: float, duration_s: float,
                   head_pid: int) -> dict[str, object]:
    # A distinct channel argument gives each channel its own TCP connection, so streams spread over all of them.
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1),
                                                            ("runyard.bench.connection", i)])
                for i in range(CHANNELS)]
    stubs = [pb_grpc.NodeAgentStub(c) for c in channels]
    fleet = Fleet()
    warmup_s = interval_s * 2
    until = time.monotonic() + warmup_s + duration_s + 60  # generous: joins of thousands take a while
    tasks = [asyncio.create_task(agent(stubs[i % CHANNELS], join_token, f"sim-{i:05d}", interval_s * i / agents,
                                       interval_s, until, fleet)) for i in range(agents)]
    head = psutil.Process(head_pid)
    me = psutil.Process()
    # Wait until every agent is connected, or until no more connect for 10 s (then the window measures those).
    last, steady_since = -1, time.monotonic()
    while len(fleet.connected) < agents and time.monotonic() - steady_since < 10:
        if len(fleet.connected) != last:
            last, steady_since = len(fleet.connected), time.monotonic()
        await asyncio.sleep(0.2)
    retries_to_connect = dict(fleet.retries)
    await asyncio.sleep(warmup_s)  # every agent beats at least twice before the window opens
    head_cpu0, my_cpu0, t0 = sum(head.cpu_times()[:2]), sum(me.cpu_times()[:2]), time.monotonic()
    connected0, reconnects0 = len(fleet.connected), fleet.reconnects
    fleet.measuring.set()
    await asyncio.sleep(duration_s)
    fleet.measuring.clear()
    head_cpu = (sum(head.cpu_times()[:2]) - head_cpu0) / (time.monotonic() - t0)
    my_cpu = (sum(me.cpu_times()[:2]) - my_cpu0) / (time.monotonic() - t0)
    await asyncio.sleep(min(interval_s, 5.0))  # acks of the window's last heartbeats; later ones count as lost
    window = list(fleet.latencies)
    connected = len(fleet.connected)
    failures: dict[str, int] = {}  # agents never acknowledged, by their latest error
    for name, error in fleet.last_error.items():
        if name not in fleet.connected:
            failures[error] = failures.get(error, 0) + 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    arrived = sorted(fleet.connected_at)
    return {"connected": connected, "failed_agents": failures, "complete": connected == agents,
            "heartbeats": len(window), "expected": int(connected * duration_s / interval_s),
            "p50_ms": round(pct(window, 0.50) * 1000, 2), "p99_ms": round(pct(window, 0.99) * 1000, 2),
            "max_ms": round(max(window) * 1000, 2) if window else None,
            "head_cpu_share_of_one_core": round(head_cpu, 3), "generator_cpu_share_of_one_core": round(my_cpu, 3),
            "connect_storm": {
                "retries_by_phase_and_code": retries_to_connect,
                "agents_that_retried": len(fleet.retried),
                "all_connected_after_s": round(arrived[-1], 2) if connected == agents and arrived else None,
                "p50_connected_after_s": round(pct(arrived, 0.5), 2) if arrived else None,
                "connected_during_window": connected - connected0,
                "reconnects_during_window": fleet.reconnects - reconnects0,
            },
            "heartbeats_sent_in_window": fleet.sent_in_window,
            "heartbeats_unanswered": fleet.sent_in_window - len(window)}


class Echo(pb_grpc.NodeAgentServicer):
    async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for message in request_iterator:
            yield pb.HeadMessage(ack=pb.Ack(msg_seq=message.msg_seq))


async def transport_limit(rate_per_s: float, seconds: float) -> dict[str, object]:
    """The bare transport at the same message rate: a grpc.aio echo stream, 50 streams."""
    server = grpc.aio.server()
    pb_grpc.add_NodeAgentServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.NodeAgentStub(channel)
    latencies: list[float] = []
    streams = 50

    async def one() -> None:
        queue: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        sent: dict[int, float] = {}

        async def requests():  # type: ignore[no-untyped-def]
            while (m := await queue.get()) is not None:
                yield m
        call = stub.Connect(requests())

        async def feed() -> None:
            end = time.monotonic() + seconds
            seq = 0
            while time.monotonic() < end:
                seq += 1
                sent[seq] = time.perf_counter()
                await queue.put(pb.AgentMessage(msg_seq=seq, heartbeat=pb.Heartbeat()))
                await asyncio.sleep(streams / rate_per_s)
            await queue.put(None)
        feeder = asyncio.create_task(feed())
        async for reply in call:
            latencies.append(time.perf_counter() - sent.pop(reply.ack.msg_seq))
        await feeder
    await asyncio.gather(*(one() for _ in range(streams)))
    await channel.close()
    await server.stop(0)
    return {"p50_ms": round(pct(latencies, 0.5) * 1000, 3), "p99_ms": round(pct(latencies, 0.99) * 1000, 3),
            "messages": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    pinned = os.cpu_count() and os.cpu_count() >= 2
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        head = Head(Path(tmp) / "head", Path(tmp) / "head.log",
                    {"down_after_s": 3600, "disconnected_after_s": 600, "sqlite_synchronous": "NORMAL"})
        head.start()
        try:
            assert head.proc is not None
            if pinned:
                os.sched_setaffinity(head.proc.pid, {0})
                os.sched_setaffinity(0, {1})
            result = asyncio.run(generate(head.address, head.join_token_file.read_text().strip(), args.agents,
                                          args.interval, args.duration, head.proc.pid))
            head_rss = psutil.Process(head.proc.pid).memory_info().rss
        finally:
            head.stop()
    if pinned:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # the limit's server and client get both cores
    limit = asyncio.run(transport_limit(args.agents / args.interval, min(args.duration, 10.0)))
    p99 = result["p99_ms"]
    rows = [
        row(f"heartbeat p99, {result['connected']} of {args.agents} agents connected", p99, "ms", 100, "<=",
            peer="bare grpc.aio echo, same rate",
            peer_ratio=round(p99 / limit["p99_ms"], 2) if isinstance(p99, float) else None),
        row("head CPU, share of one core", result["head_cpu_share_of_one_core"], "core", 0.5, "<=", digits=3),
    ]
    if not result["complete"]:  # the goal is about all N agents: fewer connected cannot meet it
        for entry in rows:
            entry["meets"] = False
    print(json.dumps({
        "scenario": "S4", "what": f"{args.agents} simulated agents, heartbeat every {args.interval:g} s",
        "ours": result, "limit_bare_grpc_echo_same_rate": limit, "head_rss_mb": round(head_rss / 2**20, 1),
        "goal": {"p99_ms": 100, "head_cpu_share_of_one_core": 0.5},
        "ratio_p99_to_goal": round(p99 / 100, 3) if isinstance(p99, float) else None,
        "ratio_cpu_to_goal": round(result["head_cpu_share_of_one_core"] / 0.5, 3),  # type: ignore[operator]
        "pinned_head_core0_generator_core1": bool(pinned),
        "generator_saturated": result["generator_cpu_share_of_one_core"] > 0.9,  # type: ignore[operator]
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "table": rows,
    }))


if __name__ == "__main__":
    main()
