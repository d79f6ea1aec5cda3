"""Prometheus' view of a real head and agent on loopback: `/metrics` after a run, as promtool reads it, `/healthz`,
and `/readyz` following the head's presence for the agent."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.harness import Agent, Cluster, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[Cluster]:
    found = Cluster.start(tmp_path / "cluster", agents=1)
    yield found
    found.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def agent_metrics_url(agent: Agent) -> str:
    """The URL the agent logged (its metrics_listen port is 0 by default: a free one)."""
    def logged() -> str | None:
        for line in agent.log_file.read_text().splitlines():
            if line.startswith("{") and "metrics_url" in line:
                return str(json.loads(line)["metrics_url"])
        return None
    return str(wait_until("the agent to log its metrics URL", logged))


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    raise AssertionError(f"no sample {name} {labels}")


def check_with_promtool(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed and could not be (`make promtool` installs it as root)")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        (result.stdout + result.stderr).decode()


def test_head_and_agent_serve_metrics_health_and_readiness(one_node: Cluster, project: Path) -> None:
    head_url = one_node.head.metrics_url
    assert head_url.startswith("http://127.0.0.1:") and head_url.endswith("/metrics")
    assert head_url in one_node.head.log_file.read_text()        # the head says where, at start
    agent_url = agent_metrics_url(one_node.agents[0])
    for url in (head_url, agent_url):
        base = url.removesuffix("/metrics")
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz") == (200, "ready\n")

    result = one_node.cli("submit", str(project), "--", "python", "hello.py")
    assert result.returncode == 0, result.stderr
    assert one_node.cli("show", "no-such-run").returncode != 0

    def head_after_the_run() -> str | None:        # the store's figures are read at most every 2 s
        status, text = get(head_url)
        return text if status == 200 and sample(text, "runyard_runs_ended", state="Completed") == 1 else None
    text = str(wait_until("the head's metrics to count the run", head_after_the_run))
    assert sample(text, "runyard_nodes", cluster="default", state="Ready", schedule="active") == 1
    assert sample(text, "runyard_runs", cluster="default", state="Queued") == 0
    assert sample(text, "runyard_log_records_received_total") >= 1
    assert sample(text, "runyard_scheduling_pass_seconds_count") >= 1
    assert sample(text, "runyard_store_commit_seconds_count") >= 1
    rpc = "runyard_grpc_server_handling_seconds_count"
    assert sample(text, rpc, grpc_service="runyard.v1.Runyard", grpc_method="Submit", grpc_code="OK") == 1
    assert sample(text, rpc, grpc_service="runyard.v1.Runyard", grpc_method="GetRun", grpc_code="NOT_FOUND") >= 1
    assert sample(text, rpc, grpc_service="runyard.v1.NodeAgent", grpc_method="Join", grpc_code="OK") == 1
    check_with_promtool(text)

    status, agent_text = get(agent_url)
    assert status == 200
    assert sample(agent_text, "runyard_head_connected") == 1
    assert sample(agent_text, "runyard_outbox_messages") >= 0
    check_with_promtool(agent_text)

    one_node.head.stop()
    agent_base = agent_url.removesuffix("/metrics")
    wait_until("the agent to be unready without its head", lambda: get(agent_base + "/readyz")[0] == 503)
    assert "not connected to the head" in get(agent_base + "/readyz")[1]
    assert get(agent_base + "/healthz") == (200, "ok\n")
    assert sample(get(agent_url)[1], "runyard_head_connected") == 0

    one_node.head.start()                          # on the same ports, its metrics' included
    assert one_node.head.metrics_url == head_url
    wait_until("the agent to be ready again", lambda: get(agent_base + "/readyz")[0] == 200)
    assert get(head_url.removesuffix("/metrics") + "/readyz") == (200, "ready\n")


def test_the_agent_exports_each_live_runs_use_with_its_labels(tmp_path: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1, fake_gpus=1, usage_interval_s=0.2)
    try:
        work = tmp_path / "work"
        work.mkdir()
        (work / "hold.py").write_text("import time\nx = bytearray(64 << 20)\nx[::4096] = b'1' * len(x[::4096])\n"
                                      "time.sleep(60)\n")
        run_id = cluster.cli("submit", "-d", "-q", "--gpus", "1", str(work), "--", "python", "hold.py",
                             check=True).stdout.strip()
        url = agent_metrics_url(cluster.agents[0])

        def sampled() -> str | None:
            text = get(url)[1]
            try:
                held = sample(text, "runyard_run_memory_bytes", run_id=run_id, workspace="default")
            except AssertionError:
                return None
            return text if held >= 64 << 20 else None
        text = str(wait_until("the agent to export the run's memory", sampled))
        assert sample(text, "runyard_run_cpu_seconds_total", run_id=run_id, workspace="default") > 0
        gpu = sample(text, "runyard_run_gpu_utilization_ratio", gpu="0", run_id=run_id, workspace="default")
        assert 0 <= gpu <= 1
        check_with_promtool(text)
        cluster.cli("cancel", run_id, check=True)
    finally:
        cluster.stop()
