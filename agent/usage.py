"""Sampling what each live run uses of the node: CPU time, resident memory and its GPUs, every `usage_interval_s`.

A run is read through its cgroups where it has them (`cpu.stat` usage_usec, `memory.current`, `memory.peak`
where the kernel has them; the pids of `cgroup.procs` for what the cgroup cannot say), else through its process
tree (psutil, from the command's pid). Its assigned GPUs are read through the agent's `GpuProbe`. All of it
blocks: one `asyncio.to_thread` per round for every run at once.

Each sample is kept as the run's latest (`latest()`, for a metrics exporter) and put in the outbox as the
attempt's system metrics (`pb.UsageSample`, numbered per attempt so that a resent one is stored once), with
keys of their own (`runyard.usagekeys`), apart from the run's metrics:

    system/cpu_seconds                       CPU time of the run's processes since its start
    system/cpu_utilization_percentage        since the previous sample; 100 = one CPU busy
    system/memory_bytes                      resident memory now (the cgroup's memory.current where it has one)
    system/memory_peak_bytes                 the highest so far (memory.peak where the kernel keeps it)
    system/gpu_<index>_utilization_percentage, system/gpu_<index>_memory_bytes

A run whose memory the kernel does not limit (a tether, or a cgroup without the memory controller) and whose
memory goes over its request is reported to its `over_limit` callback once: the supervisor kills its tree and
reports it `oom_killed`. The detail names the peak (`describe_over`).

Must not: kill or signal anything itself, decide a run's outcome, or block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.capacity import GpuProbe, GpuUse
from agent.outbox import Outbox
from protos import runyard_pb2 as pb
from runyard.clock import Clock
from runyard.units import format_size
from runyard.usagekeys import CPU_PERCENT, CPU_SECONDS, MEMORY, MEMORY_PEAK, gpu_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunUsageSample:
    """What one attempt used when it was last sampled."""

    run_id: str
    attempt: int
    workspace: str
    cpu_seconds: float
    memory_bytes: int
    gpus: tuple[GpuUse, ...] = ()
    memory_peak_bytes: int = 0
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class Reading:
    """One read of a run's processes: CPU seconds, memory now, the kernel's peak (0: unknown)."""

    cpu_seconds: float
    memory_bytes: int
    memory_peak_bytes: int = 0


class Source:
    """Where a run's use is read: its cgroups, or the process tree below its pids."""

    def __init__(self, *, cgroups: Sequence[Path] = (), pids: Sequence[int] = ()) -> None:
        self.cgroups = tuple(cgroups)
        self.pids = tuple(pids)

    @property
    def kernel_limited(self) -> bool:
        """Whether the kernel holds the run to its memory request (each of its cgroups has memory.max)."""
        return bool(self.cgroups) and all(_int(c / "memory.max") > 0 for c in self.cgroups)    # "max": no limit

    def read(self) -> Reading:
        """Blocking. Processes that are gone are left out; never raises for a run that ended."""
        if self.cgroups:
            return _add(_read_cgroup(c) for c in self.cgroups)
        cpu, memory = _tree(self.pids)
        return Reading(cpu, memory)

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in the run's cgroups (memory.events oom_kill)."""
        return sum(_keyed(c / "memory.events").get("oom_kill", 0) for c in self.cgroups)

    def kernel_peak(self) -> int:
        return max((_int(c / "memory.peak") for c in self.cgroups), default=0)


def _add(readings: Iterable[Reading]) -> Reading:
    cpu, memory, peak = 0.0, 0, 0
    for r in readings:
        cpu, memory, peak = cpu + r.cpu_seconds, memory + r.memory_bytes, peak + r.memory_peak_bytes
    return Reading(cpu, memory, peak)


def _read_cgroup(cgroup: Path) -> Reading:
    stat = _keyed(cgroup / "cpu.stat")
    has_memory = (cgroup / "memory.current").exists()     # no memory controller: the processes' RSS instead
    pids: list[int] = []
    if "usage_usec" not in stat or not has_memory:
        with contextlib.suppress(OSError, ValueError):
            pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    cpu_tree, rss = _processes(pids) if pids else (0.0, 0)
    cpu = stat["usage_usec"] / 1e6 if "usage_usec" in stat else cpu_tree
    memory = _int(cgroup / "memory.current") if has_memory else rss
    return Reading(cpu, memory, _int(cgroup / "memory.peak"))


def _keyed(path: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                found[name] = int(value)
    return found


def _int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _tree(pids: Sequence[int]) -> tuple[float, int]:
    """CPU seconds and resident bytes of `pids` and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            top = psutil.Process(pid)
            found[pid] = top
            for child in top.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    return _sum(found.values())


def _processes(pids: Sequence[int]) -> tuple[float, int]:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return _sum(procs)


def _sum(procs: Iterable[psutil.Process]) -> tuple[float, int]:
    cpu, rss = 0.0, 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            with proc.oneshot():
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
    return cpu, rss


def describe_over(peak_bytes: int, request_bytes: int) -> str:
    """The detail of a run ended for its memory: what it used at its peak, over what it asked for."""
    return f"used {format_size(peak_bytes)} at its peak, over its {format_size(request_bytes)} memory request"


@dataclass(slots=True, eq=False)
class _Watched:
    run_id: str
    attempt: int
    workspace: str
    source: Source
    gpu_indices: tuple[int, ...]
    memory_request_bytes: int
    over_limit: Callable[[int], None] | None   # called once, with the peak, when the run goes over its request
    seq: int = 0
    peak: int = 0
    last_cpu: float = 0.0
    last_at: float = 0.0
    reported_over: bool = False
    latest: RunUsageSample | None = None
    enforce: bool = False


class RunSampler:
    """Samples every watched attempt each `interval_s`; `run()` in the agent's TaskGroup ends by cancel."""

    def __init__(self, *, outbox: Outbox, probe: GpuProbe, clock: Clock, interval_s: float = 5.0) -> None:
        self._outbox = outbox
        self._probe = probe
        self._clock = clock
        self._interval_s = interval_s
        self._watched: dict[tuple[str, int], _Watched] = {}

    def watch(self, run_id: str, attempt: int, source: Source, *, workspace: str = "",
              gpu_indices: Sequence[int] = (), memory_request_bytes: int = 0,
              over_limit: Callable[[int], None] | None = None) -> None:
        """Sample this attempt from now on. `over_limit` is called (once) with its peak when its memory goes over
        `memory_request_bytes` and the kernel does not hold it there itself."""
        watched = _Watched(run_id, attempt, workspace, source, tuple(gpu_indices), memory_request_bytes,
                           over_limit, last_at=time.monotonic())
        watched.enforce = memory_request_bytes > 0 and over_limit is not None and not source.kernel_limited
        self._watched[(run_id, attempt)] = watched

    def forget(self, run_id: str, attempt: int) -> int:
        """Stop sampling the attempt; returns the highest memory seen (the kernel's peak included)."""
        watched = self._watched.pop((run_id, attempt), None)
        if watched is None:
            return 0
        return max(watched.peak, watched.source.kernel_peak())

    def latest(self) -> Sequence[RunUsageSample]:
        """The latest sample of each attempt being watched (those not sampled yet are left out)."""
        return [w.latest for w in self._watched.values() if w.latest is not None]

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            await self.sample()

    async def sample(self) -> None:
        """One round: read every watched attempt, keep it, ship it, and call out those over their request."""
        watched = list(self._watched.values())
        if not watched:
            return
        readings, gpus = await asyncio.to_thread(self._read, watched)
        now, wall = time.monotonic(), time.time()
        for w, reading in zip(watched, readings):
            if (w.run_id, w.attempt) not in self._watched:
                continue        # forgotten meanwhile: its run has ended
            self._keep(w, reading, gpus, now, wall)

    def _read(self, watched: list[_Watched]) -> tuple[list[Reading], dict[int, GpuUse]]:
        readings = [w.source.read() for w in watched]
        gpus: dict[int, GpuUse] = {}
        if any(w.gpu_indices for w in watched):
            try:
                gpus = {g.index: g for g in self._probe.use()}
            except Exception:   # a driver that fails now must not stop the sampling of memory and CPU
                log.exception("gpu use could not be read")
        return readings, gpus

    def _keep(self, w: _Watched, reading: Reading, gpus: dict[int, GpuUse], now: float, wall: float) -> None:
        w.peak = max(w.peak, reading.memory_bytes, reading.memory_peak_bytes)
        elapsed = now - w.last_at
        percent = 100.0 * max(0.0, reading.cpu_seconds - w.last_cpu) / elapsed if elapsed > 0 else 0.0
        w.last_cpu, w.last_at = reading.cpu_seconds, now
        used = tuple(gpus[i] for i in w.gpu_indices if i in gpus)
        w.latest = RunUsageSample(w.run_id, w.attempt, w.workspace, reading.cpu_seconds, reading.memory_bytes, used,
                                  w.peak, wall)
        points = [(CPU_SECONDS, reading.cpu_seconds), (CPU_PERCENT, percent), (MEMORY, float(reading.memory_bytes)),
                  (MEMORY_PEAK, float(w.peak))]
        for gpu in used:
            util_key, memory_key = gpu_keys(gpu.index)
            points += [(util_key, gpu.util_percent), (memory_key, float(gpu.memory_bytes))]
        if not self._outbox.full():     # a sample is not worth holding the run's logs back for
            sample = pb.UsageSample(seq=w.seq, ts=wall, points=[pb.MetricPoint(key=k, value=v, ts=wall)
                                                                for k, v in points])
            self._outbox.put(pb.AgentMessage(metrics=pb.MetricBatch(run_id=w.run_id, attempt=w.attempt,
                                                                    usage=[sample])))
        w.seq += 1
        if w.enforce and not w.reported_over and reading.memory_bytes > w.memory_request_bytes:
            w.reported_over = True
            assert w.over_limit is not None
            w.over_limit(w.peak)


__all__ = ["GpuUse", "Reading", "RunSampler", "RunUsageSample", "Source", "describe_over"]
