"""A run's output through its on-disk spool: order and sequence numbers under a fast writer, a full spool as one
gap record, a run never slowed by a head that does not take its logs, and the backlog on disk, not in memory."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from agent.containment import spawn_piped
from agent.outbox import Outbox
from agent.output import Cutter
from agent.records import RecordTail
from agent.shipping import LogShipper, MetricShipper
from agent.spool import Spool, SpoolBudget, copy_pipe, make_spool_dir
from protos import runyard_pb2 as pb
from tests.fakes import eventually

MiB = 1024 * 1024
LINE = re.compile(rb"line (\d{7}) x+")


def assignment() -> pb.Assignment:
    return pb.Assignment(run_id="r", attempt=1)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def head(outbox: Outbox, taken: list[pb.LogRecord], stop: asyncio.Event) -> None:
    """Takes everything from the outbox and acknowledges it, as the head does, until `stop` and the outbox is empty."""
    while not (stop.is_set() and len(outbox) == 0):
        pending = outbox.after(outbox.acked)
        for message in pending:
            taken.extend(message.logs.records)
        if pending:
            outbox.ack(pending[-1].msg_seq)
        await asyncio.sleep(0.005)


def spooled(tmp_path: Path, max_bytes: int = 1024 * MiB) -> tuple[Path, SpoolBudget]:
    return make_spool_dir(tmp_path / "spool"), SpoolBudget(max_bytes)


@pytest.mark.timeout(120)
async def test_a_fast_writer_keeps_order_and_gap_free_sequence_numbers(tmp_path: Path) -> None:
    lines = 200_000
    script = ("import sys\nw = sys.stdout.buffer.write\n"
              f"for i in range({lines}):\n    w(b'line %07d ' % i + b'x' * 107 + b'\\n')\n"
              "sys.stderr.write('done\\n')\n")
    piped = await spawn_piped(["python3", "-c", script], cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    directory, budget = spooled(tmp_path)
    outbox = Outbox(max_messages=64, max_bytes=4 * MiB)       # small: shipping waits for the "head" again and again
    shipper = LogShipper(assignment(), outbox, flush_s=0.01)
    out, err = Spool(directory, "stdout", budget, segment_bytes=MiB), Spool(directory, "stderr", budget)
    shipper.follow(out, Cutter(pb.STDOUT, record_bytes=64 * 1024))
    shipper.follow(err, Cutter(pb.STDERR, record_bytes=64 * 1024))
    taken: list[pb.LogRecord] = []
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        taker = tasks.create_task(head(outbox, taken, stop))
        shipping = tasks.create_task(shipper.run())
        await asyncio.gather(copy_pipe(piped.stdout, out), copy_pipe(piped.stderr, err))
        assert await piped.process.wait() == 0
        shipper.close()
        await shipping
        stop.set()
        await taker
    piped.close_pipes()
    stdout = [r for r in taken if r.stream == pb.STDOUT]
    assert [r.seq for r in stdout] == list(range(lines))
    assert [int(LINE.fullmatch(r.data)[1]) for r in stdout] == list(range(lines))  # type: ignore[index]
    assert not any(r.gap or r.continued for r in stdout)
    assert [(r.seq, r.data) for r in taken if r.stream == pb.STDERR] == [(0, b"done")]
    assert budget.used == 0
    assert os.listdir(directory) == [], "a spool read to its end is removed"


def test_a_full_spool_gives_one_gap_record_with_the_count_of_lines_dropped(tmp_path: Path) -> None:
    directory, budget = spooled(tmp_path, max_bytes=10_000)
    spool = Spool(directory, "stdout", budget, segment_bytes=4096)
    lines = [b"line %07d " % i + b"x" * 87 + b"\n" for i in range(1000)]     # 100 bytes each
    data = b"".join(lines)
    for start in range(0, len(data), 333):      # pipe reads end anywhere in a line
        spool.write(data[start : start + 333], 1.0)
    spool.close()
    assert budget.used <= 10_000
    cutter, out = Cutter(pb.STDOUT, record_bytes=64 * 1024), []
    while (piece := spool.read(1000)) is not None:
        if piece.gap:
            cutter.gap(piece.gap, 2.0, out)
        else:
            cutter.feed(piece.data, piece.ts, out)
    cutter.finish(3.0, out)
    gaps = [r for r in out if r.gap]
    assert len(gaps) == 1, "one episode of a full spool, one gap record"
    (count,) = map(int, re.findall(rb"^(\d+) lines dropped", gaps[0].data))
    whole = [r.data for r in out if not r.gap]
    assert all(LINE.fullmatch(d) for d in whole), "no line is glued to another or cut short"
    kept = [int(LINE.fullmatch(d)[1]) for d in whole]  # type: ignore[index]
    assert kept == list(range(len(kept))), "what the spool held, in order; then it was full"
    assert len(kept) + count == len(lines)
    assert 0 < len(kept) <= 100
    assert [r.seq for r in out] == list(range(len(out))), "the gap record takes the next number; none is skipped"
    assert budget.used == 0 and spool.dropped_total == count


def test_a_spool_that_has_room_again_spools_from_the_next_whole_line(tmp_path: Path) -> None:
    directory, budget = spooled(tmp_path, max_bytes=250)
    spool = Spool(directory, "stdout", budget)
    cutter, out = Cutter(pb.STDOUT, record_bytes=64 * 1024), []

    def drain() -> None:
        while (piece := spool.read(1000)) is not None:
            (cutter.gap(piece.gap, 0.0, out) if piece.gap else cutter.feed(piece.data, piece.ts, out))

    spool.write(b"a" * 100 + b"\n" + b"b" * 50, 1.0)    # 151 bytes spooled
    spool.write(b"b" * 50 + b"\nc" + b"c" * 99, 1.0)    # no room: the rest of b and a part of c are dropped
    drain()                                             # room again
    spool.write(b"c" * 10 + b"\nd\ne", 1.0)              # c's end is dropped with it; d and e are spooled
    spool.close()
    drain()
    cutter.finish(0.0, out)
    assert [(r.data, r.gap) for r in out] == [(b"a" * 100, False), (b"2 lines dropped: the agent's log spool was full",
                                                                  True), (b"d", False), (b"e", False)]
    assert [r.seq for r in out] == [0, 1, 2, 3]


def test_record_times_are_when_the_bytes_were_read_not_when_shipped(tmp_path: Path) -> None:
    directory, budget = spooled(tmp_path)
    spool = Spool(directory, "stdout", budget)
    spool.write(b"early\n", 100.0)
    spool.write(b"late\n", 200.0)
    spool.close()
    cutter, out = Cutter(pb.STDOUT, record_bytes=1024), []
    while (piece := spool.read(1 << 20)) is not None:
        cutter.feed(piece.data, piece.ts, out)
    assert [(r.data, r.ts) for r in out] == [(b"early", 100.0), (b"late", 200.0)]


@pytest.mark.timeout(300)
async def test_a_run_is_not_held_up_by_a_head_that_takes_nothing_and_the_disk_holds_the_backlog(
        tmp_path: Path) -> None:
    size = 300 * MiB
    line = "y" * 119
    piped = await spawn_piped(["sh", "-c", f"yes {line} | head -c {size}"], cwd=tmp_path,
                              env={"PATH": os.environ["PATH"]})
    directory, budget = spooled(tmp_path)
    outbox = Outbox(max_messages=1000, max_bytes=2 * MiB)
    shipper = LogShipper(assignment(), outbox, flush_s=0.01)
    out, err = Spool(directory, "stdout", budget), Spool(directory, "stderr", budget)
    shipper.follow(out, Cutter(pb.STDOUT, record_bytes=64 * 1024))
    shipper.follow(err, Cutter(pb.STDERR, record_bytes=64 * 1024))
    before = rss_bytes()
    async with asyncio.TaskGroup() as tasks:
        shipping = tasks.create_task(shipper.run())
        copying = [tasks.create_task(copy_pipe(piped.stdout, out)), tasks.create_task(copy_pipe(piped.stderr, err))]
        await eventually("the outbox to be full: the head takes nothing", outbox.full, timeout_s=120)
        held = len(outbox), outbox.acked
        assert await piped.process.wait() == 0, "the run wrote everything while its logs could not be shipped"
        await asyncio.gather(*copying)
        assert (len(outbox), outbox.acked) == held, "nothing was shipped meanwhile"
        assert outbox.bytes <= 2 * MiB + 2 * MiB, "the outbox is bounded in bytes (one batch over at most)"
        # The backlog is on disk: what the outbox does not hold is in the spool's segments.
        on_disk = sum(os.path.getsize(directory / name) for name in os.listdir(directory))
        assert out.backlog > size // 2 and out.dropped_total == 0
        assert on_disk >= out.backlog
        assert rss_bytes() - before < 64 * MiB, "memory did not grow with the backlog"
        # The head comes back: everything arrives, in order, nothing dropped.
        taken: list[pb.LogRecord] = []
        stop = asyncio.Event()
        taker = tasks.create_task(head(outbox, taken, stop))
        shipper.close()
        await shipping
        stop.set()
        await taker
    piped.close_pipes()
    stdout = [r for r in taken if r.stream == pb.STDOUT]
    assert [r.seq for r in stdout] == list(range(len(stdout)))
    assert len(stdout) == size // 120 and all(r.data == line.encode() for r in stdout)
    assert budget.used == 0 and os.listdir(directory) == []


def test_the_outbox_is_full_in_bytes_too() -> None:
    outbox = Outbox(max_messages=1000, max_bytes=10_000)
    message = pb.AgentMessage(logs=pb.LogBatch(run_id="r", attempt=1, records=[pb.LogRecord(data=b"x" * 6000)]))
    outbox.put(message)
    assert not outbox.full()
    outbox.put(pb.AgentMessage(logs=pb.LogBatch(run_id="r", attempt=1, records=[pb.LogRecord(data=b"x" * 6000)])))
    assert outbox.full() and outbox.bytes > 10_000
    outbox.ack(1)
    assert not outbox.full() and 6000 < outbox.bytes < 7000
    outbox.drop_attempt("r", 1)
    assert outbox.bytes == 0


@pytest.mark.timeout(60)
async def test_metric_records_wait_in_their_file_while_the_outbox_is_full_and_all_arrive_in_order(
        tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    lines = 3_000
    path.write_bytes(b"".join(b'{"ts":1.0,"k":["loss"],"v":[%d.0],"s":%d}\n' % (i, i) for i in range(lines)))
    outbox = Outbox(max_messages=2)
    shipper = MetricShipper(assignment(), outbox, RecordTail(path, max_lines_per_call=100), poll_s=0.01)
    task = asyncio.create_task(shipper.run())
    await eventually("the outbox to fill", outbox.full)
    await asyncio.sleep(0.05)
    assert len(outbox) == 2                    # held back: the rest waits in the file, not in memory

    taken: list[int] = []
    shipper.close()                            # the run ended: everything left goes, as the head makes room
    while not task.done() or len(outbox):
        pending = outbox.after(outbox.acked)
        taken.extend(int(r.seq) for m in pending for r in m.metrics.records)
        if pending:
            outbox.ack(pending[-1].msg_seq)
        await asyncio.sleep(0.001)
    await task
    assert taken == list(range(lines))
