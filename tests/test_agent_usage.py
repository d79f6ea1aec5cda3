"""The agent's sampler of runs' use (`agent/usage.py`) on real processes: memory and CPU of a process tree, a fake
GPU's use, the samples in the outbox as system metrics, and the call-out of a run over its memory request."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capacity import FakeGpuProbe
from agent.cgroups import limit_memory
from agent.outbox import Outbox
from agent.usage import RunSampler, Source, describe_over
from runyard.usagekeys import CPU_SECONDS, MEMORY, MEMORY_PEAK, gpu_keys
from runyard.clock import MonotonicClock

MIB = 2**20
HELD = 200 * MIB
# A child that touches every page of HELD bytes (so they are resident), burns a little CPU, says so, then waits.
HOLDER = (f"import sys, time\nx = bytearray({HELD})\nx[::4096] = b'1' * len(x[::4096])\n"
          "t = time.process_time()\nwhile time.process_time() - t < 0.2: pass\n"
          "print('ready', flush=True)\nsys.stdin.read()\n")


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    """A shell whose child python holds HELD bytes: the tree below the shell's pid is what is sampled."""
    child = subprocess.Popen(["/bin/sh", "-c", f'{sys.executable} -c "$0"', HOLDER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    try:
        yield child
    finally:
        child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


def _sampler(outbox: Outbox, gpus: int = 0) -> RunSampler:
    return RunSampler(outbox=outbox, probe=FakeGpuProbe(gpus, util_percent=37.0, used_bytes=3 * MIB),
                      clock=MonotonicClock(), interval_s=60.0)


def _points(outbox: Outbox) -> list[dict[str, float]]:
    """Each sample put in the outbox, as {key: value}."""
    return [{p.key: p.value for p in sample.points}
            for message in outbox.after(0) for sample in message.metrics.usage]


@pytest.mark.timeout(60)
async def test_a_process_tree_is_sampled_its_peak_at_least_what_it_touched(
        holder: subprocess.Popen[bytes]) -> None:
    outbox = Outbox(100)
    sampler = _sampler(outbox)
    sampler.watch("run-1", 2, Source(pids=[holder.pid]), workspace="ws")
    await sampler.sample()
    await sampler.sample()
    [latest] = sampler.latest()
    assert (latest.run_id, latest.attempt, latest.workspace) == ("run-1", 2, "ws")
    assert latest.memory_bytes >= HELD and latest.memory_peak_bytes >= HELD
    assert latest.cpu_seconds >= 0.2
    first, second = _points(outbox)
    assert first[MEMORY] >= HELD and second[MEMORY_PEAK] >= HELD and second[CPU_SECONDS] >= 0.2
    assert all(key.startswith("system/") for key in first)
    seqs = [s.seq for m in outbox.after(0) for s in m.metrics.usage]
    assert seqs == [0, 1] and {m.metrics.run_id for m in outbox.after(0)} == {"run-1"}
    assert sampler.forget("run-1", 2) >= HELD
    assert sampler.latest() == []


@pytest.mark.timeout(60)
async def test_a_fake_gpu_s_use_appears_for_the_run_it_is_assigned_to(holder: subprocess.Popen[bytes]) -> None:
    outbox = Outbox(100)
    sampler = _sampler(outbox, gpus=2)
    sampler.watch("run-1", 1, Source(pids=[holder.pid]), gpu_indices=[1])
    await sampler.sample()
    [latest] = sampler.latest()
    assert [(g.index, g.util_percent, g.memory_bytes) for g in latest.gpus] == [(1, 37.0, 3 * MIB)]
    assert latest.gpus[0].uuid == FakeGpuProbe(2).gpus()[1].uuid
    [points] = _points(outbox)
    util, memory = gpu_keys(1)
    assert (points[util], points[memory]) == (37.0, 3 * MIB)
    assert gpu_keys(0)[0] not in points      # not the run's GPU


@pytest.mark.timeout(60)
async def test_a_run_over_its_memory_request_is_called_out_once_with_its_peak(
        holder: subprocess.Popen[bytes]) -> None:
    sampler = _sampler(Outbox(100))
    over: list[int] = []
    sampler.watch("run-1", 1, Source(pids=[holder.pid]), memory_request_bytes=64 * MIB, over_limit=over.append)
    sampler.watch("run-2", 1, Source(pids=[holder.pid]), memory_request_bytes=HELD * 4,
                  over_limit=lambda peak: pytest.fail("a run within its request was called out"))
    await sampler.sample()
    await sampler.sample()
    assert len(over) == 1 and over[0] >= HELD
    assert describe_over(over[0], 64 * MIB).endswith("over its 64.0M memory request")


@pytest.mark.timeout(60)
async def test_a_run_that_ended_is_sampled_no_more_and_a_gone_process_reads_as_nothing() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    outbox = Outbox(100)
    sampler = _sampler(outbox)
    source = Source(pids=[child.pid])
    assert (source.read().cpu_seconds, source.read().memory_bytes) == (0.0, 0)
    sampler.watch("run-1", 1, source)
    sampler.forget("run-1", 1)
    await asyncio.wait_for(sampler.sample(), 10)
    assert len(outbox) == 0


def test_a_cgroup_without_the_memory_controller_is_left_to_the_sampler(tmp_path: Path) -> None:
    assert limit_memory(tmp_path, 256 * MIB) is False
    assert not Source(cgroups=[tmp_path]).kernel_limited
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert limit_memory(tmp_path, 256 * MIB) is True
    assert (tmp_path / "memory.max").read_text() == str(256 * MIB)
    source = Source(cgroups=[tmp_path])
    assert source.kernel_limited and source.oom_kills() == 1
