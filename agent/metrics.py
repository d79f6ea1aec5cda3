"""The agent's Prometheus metrics: one registry per agent, read at scrape time where that is cheaper than counting
every event.

At scrape time: each live run's CPU, memory and GPU use from a `UsageSource` (labelled like dcgm-exporter's:
`gpu`, `UUID`, plus `run_id` and `workspace`), the outbox's backlog, whether the head is connected. Observed as
it happens: environment builds, by outcome, and how long they took (`Environments.on_build`).
`serve_metrics` starts `/metrics`, `/healthz` and `/readyz` (ready: connected to the head) through
`runyard.monitoring`. Every name follows Prometheus' conventions: `runyard_` prefix, base units, `_total` on
counters, a ratio for a GPU's utilization.
Must not: sample anything itself (the usage source does, off the event loop), nor use the global registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runyard import monitoring
from runyard.monitoring import MonitoringServer


BUILD_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class GpuUse(Protocol):
    """One GPU's use by one run, as last sampled."""

    @property
    def index(self) -> int: ...
    @property
    def uuid(self) -> str: ...
    @property
    def util_percent(self) -> float: ...
    @property
    def memory_bytes(self) -> int: ...


class RunUsage(Protocol):
    """One live run's use of the node, as last sampled."""

    @property
    def run_id(self) -> str: ...
    @property
    def workspace(self) -> str: ...
    @property
    def cpu_seconds(self) -> float: ...         # CPU time of the run's processes since it started
    @property
    def memory_bytes(self) -> int: ...          # resident memory now
    @property
    def gpus(self) -> Sequence[GpuUse]: ...


class UsageSource(Protocol):
    """The latest sample of every live run; cheap (no sampling on the call: the source samples on its own)."""

    def latest(self) -> Sequence[RunUsage]: ...


class Backlog(Protocol):
    """The outbox as the metrics read it."""

    def __len__(self) -> int: ...
    @property
    def bytes(self) -> int: ...


class AgentCollector(Collector):
    """Runs' use, the outbox backlog and the head connection, read when scraped."""

    def __init__(self, *, usage: UsageSource, outbox: Backlog, connected: Callable[[], bool]) -> None:
        self._usage = usage
        self._outbox = outbox
        self._connected = connected

    def collect(self) -> Iterable[Metric]:
        run_labels = ["run_id", "workspace"]
        gpu_labels = ["gpu", "UUID", "run_id", "workspace"]
        cpu = CounterMetricFamily("runyard_run_cpu_seconds", "CPU time used by a live run's processes",
                                  labels=run_labels)
        memory = GaugeMetricFamily("runyard_run_memory_bytes", "Resident memory of a live run's processes",
                                   labels=run_labels)
        gpu_util = GaugeMetricFamily("runyard_run_gpu_utilization_ratio",
                                     "Utilization of a GPU assigned to a live run (0 to 1)", labels=gpu_labels)
        gpu_memory = GaugeMetricFamily("runyard_run_gpu_memory_used_bytes",
                                       "GPU memory used on a GPU assigned to a live run", labels=gpu_labels)
        for run in self._usage.latest():
            cpu.add_metric([run.run_id, run.workspace], run.cpu_seconds)
            memory.add_metric([run.run_id, run.workspace], run.memory_bytes)
            for gpu in run.gpus:
                labels = [str(gpu.index), gpu.uuid, run.run_id, run.workspace]
                gpu_util.add_metric(labels, gpu.util_percent / 100.0)
                gpu_memory.add_metric(labels, gpu.memory_bytes)
        yield from (cpu, memory, gpu_util, gpu_memory)
        yield GaugeMetricFamily("runyard_outbox_messages", "Reports and run output waiting for the head's "
                                "acknowledgement", value=len(self._outbox))
        yield GaugeMetricFamily("runyard_outbox_bytes", "Bytes of the messages waiting for the head's acknowledgement",
                                value=self._outbox.bytes)
        yield GaugeMetricFamily("runyard_head_connected", "1 while the head has accepted this agent's stream",
                                value=1 if self._connected() else 0)


class AgentMetrics:
    """The agent's registry and the instruments its parts report to."""

    def __init__(self, *, usage: UsageSource, outbox: Backlog, connected: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.connected = connected
        self.registry.register(AgentCollector(usage=usage, outbox=outbox, connected=connected))
        self.builds = Counter("runyard_env_builds", "Environment builds that ended, by outcome (ok, spec: the "
                              "spec's fault, node: the node's)", ["outcome"], registry=self.registry)
        self.build_seconds = Histogram("runyard_env_build_seconds", "Duration of an environment build, by outcome",
                                       ["outcome"], buckets=BUILD_BUCKETS, registry=self.registry)
        for outcome in ("ok", "spec", "node"):
            self.builds.labels(outcome)

    def built(self, outcome: str, seconds: float) -> None:
        """An environment build ended: `outcome` is ok, spec or node."""
        self.builds.labels(outcome).inc()
        self.build_seconds.labels(outcome).observe(seconds)


async def serve_metrics(metrics: AgentMetrics, address: str) -> MonitoringServer | None:
    """Serve `/metrics`, `/healthz` and `/readyz` (ready once connected to the head) on `address`; None when off."""
    return await monitoring.serve_metrics(
        metrics.registry, address, readiness=lambda: "" if metrics.connected() else "not connected to the head")
