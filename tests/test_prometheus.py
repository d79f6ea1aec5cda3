"""The daemons' Prometheus metrics in process: the head's collector over a real store, the agent's over a fake usage
source, both outputs passed through `promtool check metrics`, the naming conventions, the gRPC timer over a real
server on loopback, the endpoints' answers, and the Grafana dashboard naming only metrics the daemons export."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentMetrics
from runyard.monitoring import MonitoringServer
from scheduler.config import HeadConfig
from scheduler.metrics import HeadMetrics
from scheduler.model import NewRun, RunSpec
from scheduler.store import Store

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana" / "runyard.json"
BASE_UNITS = ("_seconds", "_bytes", "_ratio", "_total", "_info")
COUNTS = {"runyard_runs", "runyard_runs_ended", "runyard_queue_runs", "runyard_nodes", "runyard_outbox_messages",
          "runyard_head_connected"}   # plain counts have no unit to name


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    uuid: str
    util_percent: float
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Sample:
    run_id: str
    workspace: str
    cpu_seconds: float
    memory_bytes: int
    gpus: tuple[Gpu, ...]


class FakeUsage:
    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def latest(self) -> list[Sample]:
        return list(self.samples)


class FakeOutbox:
    def __init__(self, messages: int, size: int) -> None:
        self._messages, self._bytes = messages, size

    def __len__(self) -> int:
        return self._messages

    @property
    def bytes(self) -> int:
        return self._bytes


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples_of(text)[(name, frozenset(labels.items()))]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed and could not be (`make promtool` installs Debian's prometheus "
                    "package as root)")
    return found


def check_with_promtool(text: bytes) -> None:
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not result.stdout.strip() and not result.stderr.strip(), (result.stdout + result.stderr).decode()


def assert_named_by_convention(text: str) -> None:
    for family in text_string_to_metric_families(text):
        name = family.name
        assert re.fullmatch(r"runyard_[a-z][a-z0-9_]*", name), name
        if family.type == "counter":
            assert any(s.name == name + "_total" for s in family.samples) or not family.samples, name
        elif family.type == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
        elif family.type == "gauge" and name not in COUNTS and not name.endswith("_created"):
            assert name.endswith(BASE_UNITS), f"{name}: a gauge names its unit"


def new_run(compute: str = "default") -> NewRun:
    return NewRun(workspace="default", experiment="metrics", display_name="", tags={}, properties={},
                  snapshot_sha256="0" * 64, spec=RunSpec(argv=("true",), compute=compute), idempotency_key="",
                  parent_id="")


async def open_store(path: Path) -> Store:
    return await Store.open(path, synchronous="NORMAL")


async def head_text(store: Store, metrics: HeadMetrics) -> str:
    await metrics.collector.refresh()
    return generate_latest(metrics.registry).decode()


def agent_metrics() -> AgentMetrics:
    usage = FakeUsage([Sample("run-1", "vision", 12.5, 3 * 1024**3,
                              (Gpu(0, "GPU-aaaa", 87.0, 10 * 1024**3), Gpu(1, "GPU-bbbb", 43.0, 2 * 1024**3))),
                       Sample("run-2", "nlp", 1.0, 512 * 1024**2, ())])
    metrics = AgentMetrics(usage=usage, outbox=FakeOutbox(7, 4096), connected=lambda: True)
    metrics.built("ok", 12.0)
    metrics.built("spec", 3.0)
    return metrics


async def test_head_metrics_count_runs_queue_and_commits(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        metrics = HeadMetrics(store)
        store.writer.on_commit = metrics.commit_seconds.observe
        for index in range(3):
            await store.create_run(new_run("gpu-pool" if index else "default"))
        metrics.pass_seconds.observe(0.004)
        metrics.ingested(10, 0)
        metrics.ingested(0, 25)
        metrics.autoscaler_action("default", "launch", True)
        metrics.autoscaler_action("default", "terminate", False)
        text = await head_text(store, metrics)
    finally:
        await store.close()
    assert value(text, "runyard_runs", state="Queued", cluster="gpu-pool") == 2
    assert value(text, "runyard_runs", state="Queued", cluster="default") == 1
    assert value(text, "runyard_runs", state="Running", cluster="default") == 0
    assert value(text, "runyard_runs_ended", state="Completed") == 0
    assert value(text, "runyard_queue_runs", cluster="gpu-pool") == 2
    assert value(text, "runyard_queue_oldest_age_seconds", cluster="gpu-pool") >= 0
    assert value(text, "runyard_log_records_received_total") == 10
    assert value(text, "runyard_metric_points_received_total") == 25
    assert value(text, "runyard_autoscaler_actions_total", cluster="default", action="terminate", outcome="error") == 1
    assert value(text, "runyard_scheduling_pass_seconds_count") == 1
    assert value(text, "runyard_store_commit_seconds_count") >= 3
    assert value(text, "runyard_store_writes_total") >= 3
    assert_named_by_convention(text)


async def test_head_refresh_is_cached_between_scrapes(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        metrics = HeadMetrics(store)
        before = await head_text(store, metrics)
        await store.create_run(new_run())
        after = await head_text(store, metrics)         # within REFRESH_EVERY_S: the same figures
        metrics.collector.state.read_at = float("-inf")  # as if the refresh period had passed
        later = await head_text(store, metrics)
    finally:
        await store.close()
    assert value(before, "runyard_runs", state="Queued", cluster="default") == 0
    assert value(after, "runyard_runs", state="Queued", cluster="default") == 0
    assert value(later, "runyard_runs", state="Queued", cluster="default") == 1


async def test_head_output_passes_promtool(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        metrics = HeadMetrics(store)
        metrics.rpc_seconds.labels("runyard.Runyard", "Submit", "unary_unary", "OK").observe(0.002)
        metrics.pass_seconds.observe(0.001)
        await metrics.collector.refresh()
        check_with_promtool(generate_latest(metrics.registry))
    finally:
        await store.close()


def test_agent_metrics_report_each_run_like_dcgm_exporter() -> None:
    text = generate_latest(agent_metrics().registry).decode()
    gpu0 = {"gpu": "0", "UUID": "GPU-aaaa", "run_id": "run-1", "workspace": "vision"}
    assert value(text, "runyard_run_gpu_utilization_ratio", **gpu0) == pytest.approx(0.87)
    assert value(text, "runyard_run_gpu_memory_used_bytes", **gpu0) == 10 * 1024**3
    assert value(text, "runyard_run_cpu_seconds_total", run_id="run-1", workspace="vision") == 12.5
    assert value(text, "runyard_run_memory_bytes", run_id="run-2", workspace="nlp") == 512 * 1024**2
    assert value(text, "runyard_outbox_messages") == 7 and value(text, "runyard_outbox_bytes") == 4096
    assert value(text, "runyard_head_connected") == 1
    assert value(text, "runyard_env_builds_total", outcome="ok") == 1
    assert value(text, "runyard_env_builds_total", outcome="node") == 0
    assert value(text, "runyard_env_build_seconds_count", outcome="spec") == 1
    assert_named_by_convention(text)


class NoRuns:
    def latest(self) -> tuple[()]:
        return ()


def test_agent_without_a_live_run_reports_no_run() -> None:
    metrics = AgentMetrics(usage=NoRuns(), outbox=FakeOutbox(0, 0), connected=lambda: False)
    text = generate_latest(metrics.registry).decode()
    assert not [k for k in samples_of(text) if k[0].startswith("runyard_run_")]
    assert value(text, "runyard_head_connected") == 0


def test_agent_output_passes_promtool() -> None:
    check_with_promtool(generate_latest(agent_metrics().registry))


def test_metrics_address_defaults_to_loopback_next_to_the_other_ports() -> None:
    assert HeadConfig(listen="0.0.0.0:7433").metrics_address() == "127.0.0.1:7436"
    assert HeadConfig(listen="127.0.0.1:0").metrics_address() == "127.0.0.1:0"
    assert HeadConfig(metrics_listen="10.0.0.5:9100").metrics_address() == "10.0.0.5:9100"
    assert HeadConfig(metrics_listen="off").metrics_address() == "off"


async def test_endpoints_answer_health_readiness_and_metrics() -> None:
    ready = {"why": "not connected to the head"}
    metrics = agent_metrics()
    server = MonitoringServer(metrics.registry, readiness=lambda: ready["why"])
    url = await server.start("127.0.0.1:0")
    base = url.removesuffix("/metrics")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/healthz") as response:
                assert response.status == 200
            async with http.get(base + "/readyz") as response:
                assert response.status == 503 and "not connected to the head" in await response.text()
            ready["why"] = ""
            async with http.get(base + "/readyz") as response:
                assert response.status == 200
            async with http.get(url) as response:
                assert response.status == 200 and response.content_type == "text/plain"
                assert "runyard_outbox_messages 7.0" in await response.text()
    finally:
        await server.stop()


@pytest.mark.parametrize("address", ["7436", "nohost:port", "127.0.0.1:99999"])
async def test_a_bad_address_is_refused(address: str) -> None:
    server = MonitoringServer(agent_metrics().registry, readiness=lambda: "")
    with pytest.raises(ValueError, match="metrics_listen must be host:port"):
        await server.start(address)


async def test_rpc_timer_counts_each_call_by_method_and_code(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        metrics = HeadMetrics(store)

        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if request == b"missing":
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
            return request

        async def count(request: bytes, context: grpc.aio.ServicerContext) -> Any:
            for index in range(3):
                yield bytes([index])

        handlers = grpc.method_handlers_generic_handler("test.Echo", {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        })
        server = grpc.aio.server(interceptors=[metrics.interceptor()])
        server.add_generic_rpc_handlers((handlers,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                echo_call = channel.unary_unary("/test.Echo/Echo")
                assert await echo_call(b"hi") == b"hi"
                assert await echo_call(b"again") == b"again"
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await echo_call(b"missing")
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND
                assert [m async for m in channel.unary_stream("/test.Echo/Count")(b"")] == [b"\0", b"\1", b"\2"]
        finally:
            await server.stop(grace=None)
        text = await head_text(store, metrics)
    finally:
        await store.close()
    name = "runyard_grpc_server_handling_seconds_count"
    assert value(text, name, grpc_service="test.Echo", grpc_method="Echo", grpc_type="unary_unary",
                 grpc_code="OK") == 2
    assert value(text, name, grpc_service="test.Echo", grpc_method="Echo", grpc_type="unary_unary",
                 grpc_code="NOT_FOUND") == 1
    assert value(text, name, grpc_service="test.Echo", grpc_method="Count", grpc_type="unary_stream",
                 grpc_code="OK") == 1


def exported_names(texts: list[str]) -> set[str]:
    names = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
    return names


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found.extend(t["expr"] for t in inner.get("targets", []))
    return found


async def test_dashboard_names_only_exported_metrics(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    store = await open_store(tmp_path)
    try:
        metrics = HeadMetrics(store)
        metrics.rpc_seconds.labels("runyard.Runyard", "Submit", "unary_unary", "OK").observe(0.002)
        metrics.autoscaler_action("default", "launch", True)
        head = await head_text(store, metrics)
    finally:
        await store.close()
    exported = exported_names([head, generate_latest(agent_metrics().registry).decode()])
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 10
    for expression in expressions:
        named = set(re.findall(r"\b(runyard_[a-z0-9_]+)", expression))
        assert named, f"an expression naming no metric of ours: {expression}"
        assert named <= exported, f"{expression}: {sorted(named - exported)} not exported"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "run_id" in variables
    titles = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    assert len(titles) == 2


def test_dashboard_panels_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


async def test_scrapes_do_not_block_each_other(tmp_path: Path) -> None:
    """Several scrapes at once (two Prometheus servers) each get the whole output."""
    store = await open_store(tmp_path)
    try:
        metrics = HeadMetrics(store)
        server = MonitoringServer(metrics.registry, readiness=lambda: "", refresh=metrics.collector.refresh)
        url = await server.start("127.0.0.1:0")
        try:
            async with aiohttp.ClientSession() as http:
                async def scrape() -> str:
                    async with http.get(url) as response:
                        return await response.text()
                bodies = await asyncio.gather(*(scrape() for _ in range(4)))
        finally:
            await server.stop()
    finally:
        await store.close()
    assert all("runyard_nodes{" in body for body in bodies)
