"""The head's Prometheus metrics: one registry per head, what the parts report as it happens, and what is read
from the store at scrape time.

Read at scrape time (`HeadState`, refreshed at most every REFRESH_EVERY_S): runs by state and cluster (one query over
the live runs' index, one count of the ended ones), the queue per cluster (the store's in-memory mirror), nodes by
state and schedule (the store's node cache), and the group commit's figures. Observed as it happens, through the
parts' one-line hooks (`on_pass`, `on_commit`, `on_action`, `on_ingest`): scheduling pass and commit durations,
autoscaler actions, log records and metric points received. `RpcMetrics` is the gRPC interceptor that times every
call by method and status code. `serve_metrics` starts `/metrics`, `/healthz` and `/readyz` (`runyard.monitoring`).
Every name follows Prometheus' conventions: `runyard_` prefix, base units, `_total` on counters.
Must not: write anything, or read the database more than once per refresh; nor use the global registry.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runyard import monitoring
from runyard.monitoring import MonitoringServer
from scheduler.core.lifecycle import ACTIVE, TERMINAL, RunState
from scheduler.core.nodes import NodeState, Schedule
from scheduler.store import Store


REFRESH_EVERY_S = 2.0       # a scrape reads the store at most this often; scrapes in between see the same figures
LIVE = (RunState.QUEUED, *sorted(ACTIVE))
ENDED = sorted(TERMINAL)
# Seconds: a pass over a long queue and a commit under load sit in the milliseconds; a gRPC call ranges wider.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


@dataclass(slots=True)
class HeadState:
    """What the collector reports, as of the last refresh."""

    live_runs: list[tuple[str, str, int]] = field(default_factory=list)     # (state, cluster, count)
    ended_runs: list[tuple[str, int]] = field(default_factory=list)         # (state, count)
    queue: dict[str, tuple[int, float]] = field(default_factory=dict)       # cluster -> (runs, oldest created_at)
    nodes: Tally[tuple[str, str, str]] = field(default_factory=Tally)       # (cluster, state, schedule) -> count
    now: float = 0.0
    read_at: float = float("-inf")                                          # monotonic


class HeadCollector(Collector):
    """Runs, queue and nodes from the last `HeadState`, and the group commit's counts, at scrape time."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.state = HeadState()
        self._reading = asyncio.Lock()      # scrapes at once read the store once

    async def refresh(self) -> None:
        """Read the store again unless the figures are younger than REFRESH_EVERY_S."""
        async with self._reading:
            if time.monotonic() - self.state.read_at >= REFRESH_EVERY_S:
                await self._read()

    async def _read(self) -> None:
        live, ended = await self._store.count_runs()
        queue: dict[str, tuple[int, float]] = {}
        for row in await self._store.queued():
            count, oldest = queue.get(row.compute, (0, row.created_at))
            queue[row.compute] = (count + 1, min(oldest, row.created_at))
        nodes = Tally((n.cluster, str(n.state), str(n.schedule)) for n in await self._store.list_nodes())
        self.state = HeadState(live, ended, queue, nodes, self._store.clock(), time.monotonic())

    def collect(self) -> Iterable[Metric]:
        state = self.state
        clusters = sorted({c for _, c, _ in state.live_runs} | set(state.queue) | {c for c, _, _ in state.nodes}
                          | {"default"})
        runs = GaugeMetricFamily("runyard_runs", "Runs in a live state (Queued, Preparing, Running, Finalizing) by "
                                 "compute cluster", labels=["state", "cluster"])
        counts = {(s, c): n for s, c, n in state.live_runs}
        for cluster in clusters:
            for run_state in LIVE:
                runs.add_metric([str(run_state), cluster], counts.get((str(run_state), cluster), 0))
        yield runs
        ended = GaugeMetricFamily("runyard_runs_ended", "Runs that ended, by end state (all clusters)",
                                  labels=["state"])
        ended_counts = dict(state.ended_runs)
        for run_state in ENDED:
            ended.add_metric([str(run_state)], ended_counts.get(str(run_state), 0))
        yield ended
        depth = GaugeMetricFamily("runyard_queue_runs", "Queued runs by compute cluster", labels=["cluster"])
        age = GaugeMetricFamily("runyard_queue_oldest_age_seconds",
                                "Seconds the oldest queued run of the cluster has waited (0: none queued)",
                                labels=["cluster"])
        for cluster in clusters:
            count, oldest = state.queue.get(cluster, (0, state.now))
            depth.add_metric([cluster], count)
            age.add_metric([cluster], max(0.0, state.now - oldest))
        yield depth
        yield age
        nodes = GaugeMetricFamily("runyard_nodes", "Nodes by cluster, state and schedule",
                                  labels=["cluster", "state", "schedule"])
        for cluster in sorted({c for c, _, _ in state.nodes} | {"default"}):
            for node_state in NodeState:
                for schedule in Schedule:
                    nodes.add_metric([cluster, str(node_state), str(schedule)],
                                     state.nodes.get((cluster, str(node_state), str(schedule)), 0))
        yield nodes
        writer = self._store.writer
        yield CounterMetricFamily("runyard_store_commits", "Write transactions of the group commit (each holds one "
                                  "or more callers' writes)", value=writer.groups)
        yield CounterMetricFamily("runyard_store_writes", "Callers' write jobs committed by the group commit",
                                  value=writer.jobs)


class HeadMetrics:
    """The head's registry and the instruments its parts report to."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = HeadCollector(store)
        self.registry.register(self.collector)
        self.pass_seconds = Histogram("runyard_scheduling_pass_seconds",
                                      "Duration of one scheduling pass (order, place, commit the placements)",
                                      buckets=FAST_BUCKETS, registry=self.registry)
        self.commit_seconds = Histogram("runyard_store_commit_seconds",
                                        "Duration of one group-commit write transaction, BEGIN to COMMIT",
                                        buckets=FAST_BUCKETS, registry=self.registry)
        self.rpc_seconds = Histogram("runyard_grpc_server_handling_seconds",
                                     "gRPC calls served by the head, by method, type and status code; streams "
                                     "count when they end", ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
                                     buckets=RPC_BUCKETS, registry=self.registry)
        self.autoscaler_actions = Counter("runyard_autoscaler_actions", "Node launches and terminations the "
                                          "autoscaler asked its providers for, by outcome",
                                          ["cluster", "action", "outcome"], registry=self.registry)
        self.log_records = Counter("runyard_log_records_received", "Log records received from agents (a line, or a "
                                   "bounded piece of a long one; resent ones included)", registry=self.registry)
        self.metric_points = Counter("runyard_metric_points_received", "Metric points received from agents "
                                     "(resent ones included)", registry=self.registry)

    def autoscaler_action(self, cluster: str, action: str, ok: bool) -> None:
        self.autoscaler_actions.labels(cluster, action, "ok" if ok else "error").inc()

    def ingested(self, log_records: int, metric_points: int) -> None:
        if log_records:
            self.log_records.inc(log_records)
        if metric_points:
            self.metric_points.inc(metric_points)

    def interceptor(self) -> RpcMetrics:
        return RpcMetrics(self.rpc_seconds)


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status code the call ended with: the one set on the context (an abort), else OK or UNKNOWN."""
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    if error is None:
        return "OK"
    if isinstance(error, BaseException) and type(error).__name__ == "CancelledError":
        return "CANCELLED"
    return "UNKNOWN"


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Times every call from the moment the head takes it (authentication included: put it first) to its end,
    and counts it under its method and final status code."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        for attribute, factory in _KINDS:
            behavior = getattr(handler, attribute)
            if behavior is not None:
                observe = self._histogram.labels(service, method, attribute, "OK").observe
                timed = self._timed(behavior, service, method, attribute, observe)
                return factory(timed, request_deserializer=handler.request_deserializer,
                               response_serializer=handler.response_serializer)
        return handler

    def _timed(self, behavior: Callable[..., Any], service: str, method: str, kind: str,
               observe_ok: Callable[[float], None]) -> Callable[..., Any]:
        def observe(context: grpc.aio.ServicerContext, error: BaseException | None, seconds: float) -> None:
            code = _code(context, error)
            if code == "OK":
                observe_ok(seconds)
            else:
                self._histogram.labels(service, method, kind, code).observe(seconds)

        if inspect.isasyncgenfunction(behavior):
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, error = time.perf_counter(), None
                try:
                    async for item in behavior(request, context):
                        yield item
                except BaseException as err:
                    error = err
                    raise
                finally:
                    observe(context, error, time.perf_counter() - started)
            return stream

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, error = time.perf_counter(), None
            try:
                return await behavior(request, context)
            except BaseException as err:
                error = err
                raise
            finally:
                observe(context, error, time.perf_counter() - started)
        return call


async def serve_metrics(metrics: HeadMetrics, address: str, *, readiness: Callable[[], str]) -> MonitoringServer | None:
    """Serve `/metrics`, `/healthz` and `/readyz` on `address` (plain HTTP; loopback unless the operator chose
    otherwise); None when `address` is "off"."""
    return await monitoring.serve_metrics(metrics.registry, address, readiness=readiness,
                                          refresh=metrics.collector.refresh)
