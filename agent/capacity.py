"""What this node offers: CPUs, memory and disk from psutil, GPUs from a `GpuProbe`, and what it can build
environments with (its platform, the Python versions runs can use, its builders: `interpreters.py`,
`builders.py`). The environments it has built are added at each Hello (`link.py`).

Probes: `NvmlProbe` asks the NVIDIA driver (none when NVML is missing), `FakeGpuProbe` reports configured fake
GPUs (tests, demos on machines without GPUs), each busy at a fixed rate. Each also says what its GPUs are doing
now (`use()`, read by `usage.RunSampler`). `app.py` picks one. All calls block: use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from protos import runyard_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    uuid: str
    model: str
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class GpuUse:
    """What one GPU is doing now: its utilisation (percent of the last sample period) and memory in use."""

    index: int
    uuid: str
    util_percent: float
    memory_bytes: int


class GpuProbe(Protocol):
    def gpus(self) -> list[Gpu]:
        """The GPUs of this machine; [] when there are none. Must not raise for a machine without GPUs."""
        ...

    def use(self) -> list[GpuUse]:
        """What each GPU is doing now (`usage.RunSampler`); [] when there are none."""
        ...


class NvmlProbe:
    """GPUs as the NVIDIA driver reports them; none when the NVML library or driver is missing."""

    def gpus(self) -> list[Gpu]:
        with _nvml_devices(say_why=True) as (nvml, handles):
            return [Gpu(index, _text(nvml.nvmlDeviceGetUUID(handle)), _text(nvml.nvmlDeviceGetName(handle)),
                        int(nvml.nvmlDeviceGetMemoryInfo(handle).total)) for index, handle in enumerate(handles)]

    def use(self) -> list[GpuUse]:
        with _nvml_devices(say_why=False) as (nvml, handles):
            return [GpuUse(index, _text(nvml.nvmlDeviceGetUUID(handle)),
                           float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                           int(nvml.nvmlDeviceGetMemoryInfo(handle).used)) for index, handle in enumerate(handles)]


@functools.cache
def _nvml_installed() -> bool:
    """Whether libnvidia-ml is on this machine: asked once (`find_library` runs ldconfig), not at every sample."""
    return ctypes.util.find_library("nvidia-ml") is not None


@contextlib.contextmanager
def _nvml_devices(*, say_why: bool) -> Iterator[tuple[Any, list[Any]]]:
    """pynvml and the handle of every NVIDIA GPU, with NVML initialised around the block; (None, []) when the
    library or the driver is missing (said in the log when `say_why`)."""
    if not _nvml_installed():     # no driver: spare the agent pynvml's 3 MB of bindings
        if say_why:
            log.info("no nvidia gpus", extra={"why": "the NVML library (libnvidia-ml) is not installed"})
        yield None, []
        return
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        if say_why:
            log.info("no nvidia gpus", extra={"why": str(err)})
        yield None, []
        return
    try:
        yield pynvml, [pynvml.nvmlDeviceGetHandleByIndex(index) for index in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class FakeGpuProbe:
    count: int
    model: str = "FakeGPU 80GB"
    memory_bytes: int = 80 * 1024**3
    node_name: str = "node"
    util_percent: float = 50.0             # what every fake GPU reports doing
    used_bytes: int = 1024**3

    def gpus(self) -> list[Gpu]:
        return [Gpu(i, f"GPU-fake-{self.node_name}-{i}", self.model, self.memory_bytes) for i in range(self.count)]

    def use(self) -> list[GpuUse]:
        return [GpuUse(g.index, g.uuid, self.util_percent, self.used_bytes) for g in self.gpus()]


def read_capacity(probe: GpuProbe, data_dir: Path, *, cpus: float = 0.0, memory_bytes: int = 0, platform: str = "",
                  interpreters: Sequence[str] = (), builders: Sequence[str] = (), advertise_address: str = "",
                  rendezvous_ports: tuple[int, int] = (29500, 29999)) -> pb.Capacity:
    """This node's capacity; `cpus`/`memory_bytes` > 0 override what psutil sees."""
    gpus = probe.gpus()
    return pb.Capacity(
        cpus=cpus or float(psutil.cpu_count(logical=True) or 1),
        memory_bytes=memory_bytes or psutil.virtual_memory().total,
        disk_bytes=psutil.disk_usage(str(data_dir)).total,
        gpus=[pb.GpuInfo(index=g.index, uuid=g.uuid, model=g.model, memory_bytes=g.memory_bytes) for g in gpus],
        platform=platform, interpreters=list(interpreters), builders=list(builders),
        advertise_address=advertise_address, rendezvous_port_min=rendezvous_ports[0],
        rendezvous_port_max=rendezvous_ports[1],
    )
