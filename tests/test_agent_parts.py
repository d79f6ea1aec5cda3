"""The agent's pure parts: cutting output into log records, the outbox of unacknowledged reports, and capacity."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import random
from pathlib import Path

import pytest

from agent.capacity import FakeGpuProbe, NvmlProbe, read_capacity
from agent.outbox import Outbox
from agent.output import read_records
from protos import runyard_pb2 as pb

KiB = 1024


async def records_of(data: bytes, *, record_bytes: int = 64 * KiB, feeds: int = 1,
                     rank: int = 0, tagged: tuple[int, ...] = ()) -> list[pb.LogRecord]:
    """Feed `data` (in `feeds` pieces) to a real StreamReader and collect what read_records emits."""
    reader = asyncio.StreamReader()
    step = max(1, -(-len(data) // feeds))
    for start in range(0, len(data), step):
        reader.feed_data(data[start : start + step])
    reader.feed_eof()
    found: list[pb.LogRecord] = []
    async with asyncio.timeout(30):
        count = await read_records(reader, pb.STDERR, found.append, record_bytes=record_bytes, rank=rank,
                                   tagged=tagged)
    assert count == len(found)
    return found


def rejoin(records: list[pb.LogRecord]) -> bytes:
    """The output as it was: a record not marked `continued` ended a line (or the stream)."""
    return b"".join(r.data + (b"" if r.continued else b"\n") for r in records)


async def test_lines_become_records_in_order() -> None:
    records = await records_of(b"first\nsecond\n\nfourth\n")
    assert [r.data for r in records] == [b"first", b"second", b"", b"fourth"]
    assert not any(r.continued for r in records)
    assert {r.stream for r in records} == {pb.STDERR}
    assert all(r.ts > 0 for r in records)


async def test_a_launchers_lines_go_to_the_ranks_they_name() -> None:
    output = (b"launcher starting\n[rank2]:step 1\n[rank3]:" + b"x" * 10 + b"\n[rank2]:step 2\n"
              b"[rank7]:not a worker of this node\n[rank3]:[rank2]:as printed\n")
    records = await records_of(output, record_bytes=8, rank=2, tagged=(2, 3))
    by_rank: dict[int, list[pb.LogRecord]] = {}
    for r in records:
        by_rank.setdefault(r.rank, []).append(r)
    assert rejoin(by_rank[2]) == b"launcher starting\nstep 1\nstep 2\n[rank7]:not a worker of this node\n"
    assert rejoin(by_rank[3]) == b"x" * 10 + b"\n[rank2]:as printed\n"  # a continued line keeps its rank
    assert all([r.seq for r in rs] == list(range(len(rs))) for rs in by_rank.values()), "each rank's own sequence"


async def test_final_line_without_newline_is_emitted() -> None:
    records = await records_of(b"done\nno newline at the end")
    assert [r.data for r in records] == [b"done", b"no newline at the end"]
    assert not records[-1].continued


async def test_empty_stream_emits_nothing() -> None:
    assert await records_of(b"") == []


async def test_seq_is_contiguous_from_zero() -> None:
    data = b"".join(b"x" * random.Random(n).randrange(0, 300) + b"\n" for n in range(200))
    records = await records_of(data, record_bytes=100, feeds=37)
    assert [r.seq for r in records] == list(range(len(records)))
    assert rejoin(records) == data


async def test_ten_megabyte_line_is_cut_into_bounded_records_exactly() -> None:
    every_byte_but_newline = bytes(b for b in range(256) if b != ord("\n"))
    line = (every_byte_but_newline * (10_000_000 // 255 + 1))[:10_000_000]
    record_bytes = 64 * KiB
    records = await records_of(line, record_bytes=record_bytes)
    assert all(len(r.data) <= record_bytes for r in records)
    assert len(records) == -(-len(line) // record_bytes)
    assert all(r.continued for r in records[:-1]) and not records[-1].continued
    assert b"".join(r.data for r in records) == line
    assert [r.seq for r in records] == list(range(len(records)))


@pytest.mark.parametrize("feeds", [1, 3, 1000])
async def test_long_lines_among_short_ones_survive_any_chunking(feeds: int) -> None:
    data = b"short\n" + b"L" * 250 + b"\n" + b"M" * 100 + b"\n" + b"N" * 101 + b"\n" + b"tail"
    records = await records_of(data, record_bytes=100, feeds=feeds)
    assert all(len(r.data) <= 100 for r in records)
    assert rejoin(records) == data + b"\n"
    # A line of exactly record_bytes is one record; one byte more is two, the first continued.
    assert [(len(r.data), r.continued) for r in records] == [
        (5, False), (100, True), (100, True), (50, False), (100, False), (100, True), (1, False), (4, False),
    ]


async def test_bytes_are_kept_as_they_are() -> None:
    data = b"\x1b[1;31mred\x1b[0m\n\xff\xfe\xc3( not utf-8\r\n\x00nul\n"
    records = await records_of(data)
    assert [r.data for r in records] == [b"\x1b[1;31mred\x1b[0m", b"\xff\xfe\xc3( not utf-8\r", b"\x00nul"]


# --- the outbox -------------------------------------------------------------------------------------------------


def logs(run_id: str = "r", attempt: int = 1) -> pb.AgentMessage:
    return pb.AgentMessage(logs=pb.LogBatch(run_id=run_id, attempt=attempt))


def update(run_id: str = "r", attempt: int = 1) -> pb.AgentMessage:
    return pb.AgentMessage(run_update=pb.RunUpdate(run_id=run_id, attempt=attempt, phase=pb.RunUpdate.RUNNING))


def metrics(run_id: str = "r", attempt: int = 1) -> pb.AgentMessage:
    return pb.AgentMessage(metrics=pb.MetricBatch(run_id=run_id, attempt=attempt))


def test_put_numbers_messages_in_order() -> None:
    outbox = Outbox(max_messages=10)
    assert not outbox.changed.is_set()
    for message in (logs(), update(), metrics()):
        outbox.put(message)
    assert outbox.changed.is_set()
    assert [m.msg_seq for m in outbox.after(0)] == [1, 2, 3]
    assert len(outbox) == 3


def test_ack_drops_everything_up_to_it() -> None:
    outbox = Outbox(max_messages=10)
    for _ in range(5):
        outbox.put(logs())
    outbox.ack(3)
    assert [m.msg_seq for m in outbox.after(0)] == [4, 5]
    outbox.ack(2)  # an older ack arriving late changes nothing
    assert [m.msg_seq for m in outbox.after(0)] == [4, 5]
    outbox.ack(5)
    assert len(outbox) == 0 and outbox.after(0) == []
    outbox.put(logs())
    assert [m.msg_seq for m in outbox.after(0)] == [6], "numbers are never reused after an ack"


def test_after_gives_unacked_messages_to_resend_in_order() -> None:
    outbox = Outbox(max_messages=10)
    sent = [logs("a"), update("b"), metrics("c"), logs("d")]
    for message in sent:
        outbox.put(message)
    outbox.ack(1)
    # After a reconnect everything the head has not acknowledged goes again, with its own number.
    resend = outbox.after(1)
    assert [(m.msg_seq, m.WhichOneof("body")) for m in resend] == [(2, "run_update"), (3, "metrics"), (4, "logs")]
    assert [m.msg_seq for m in outbox.after(3)] == [4]
    assert outbox.after(4) == []


def test_full_at_max_messages() -> None:
    outbox = Outbox(max_messages=3)
    for _ in range(2):
        outbox.put(logs())
    assert not outbox.full()
    outbox.put(logs())
    assert outbox.full()
    outbox.ack(1)
    assert not outbox.full()


def test_drop_attempt_forgets_only_that_attempt() -> None:
    outbox = Outbox(max_messages=10)
    outbox.put(logs("r", 1))
    outbox.put(update("r", 2))
    outbox.put(metrics("r", 1))
    outbox.put(pb.AgentMessage(heartbeat=pb.Heartbeat(sent_at=1.0)))
    outbox.put(logs("other", 1))
    assert outbox.attempts() == {("r", 1), ("r", 2), ("other", 1)}
    outbox.drop_attempt("r", 1)
    assert outbox.attempts() == {("r", 2), ("other", 1)}
    assert [m.msg_seq for m in outbox.after(0)] == [2, 4, 5]
    outbox.ack(4)
    assert outbox.attempts() == {("other", 1)}


# --- capacity ---------------------------------------------------------------------------------------------------


def test_fake_gpus_have_indices_and_distinct_uuids() -> None:
    gpus = FakeGpuProbe(2).gpus()
    assert [g.index for g in gpus] == [0, 1]
    assert len({g.uuid for g in gpus}) == 2
    assert all(g.memory_bytes > 0 and g.model for g in gpus)
    other_node = FakeGpuProbe(2, node_name="other").gpus()
    assert not {g.uuid for g in gpus} & {g.uuid for g in other_node}


def test_read_capacity_honours_overrides_and_reports_gpus(tmp_path: Path) -> None:
    capacity = read_capacity(FakeGpuProbe(2), tmp_path, cpus=3, memory_bytes=5)
    assert capacity.cpus == 3.0 and capacity.memory_bytes == 5
    assert capacity.disk_bytes > 0
    assert [(g.index, g.uuid) for g in capacity.gpus] == [(g.index, g.uuid) for g in FakeGpuProbe(2).gpus()]


def test_read_capacity_without_overrides_sees_the_machine(tmp_path: Path) -> None:
    capacity = read_capacity(FakeGpuProbe(0), tmp_path)
    assert capacity.cpus >= 1 and capacity.memory_bytes > 0 and list(capacity.gpus) == []


def test_nvml_probe_without_nvidia_returns_a_list() -> None:
    found = NvmlProbe().gpus()
    assert isinstance(found, list)
    assert [g.index for g in found] == list(range(len(found)))


def test_a_running_agent_does_not_load_cryptography() -> None:
    """Only enrolling needs it (a key and a CSR): 8 MB of every agent's memory otherwise (S6's RSS bound)."""
    probe = subprocess.run([sys.executable, "-c", "import sys, agent.app; "
                            "print(sorted(m for m in sys.modules if m.startswith('cryptography')))"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert probe.stdout.strip() == "[]"
