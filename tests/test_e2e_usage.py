"""Runs' use of their nodes, end to end: the agent's samples as system metrics (`metrics --system`), their peak and
mean in `show`, CPU- and GPU-hours in `usage`, and a run over its memory request ended alone as oom_killed."""

from __future__ import annotations

import re
import json
from datetime import datetime
from pathlib import Path

import pytest

from testbed.harness import Cluster, wait_until
from tests.test_agent_containment import MODES

MIB = 2**20


def _memory_seen(cluster: Cluster, run_id: str) -> float:
    found = cluster.client().metrics(run_id, "system/memory_bytes", system=True)
    return max((v for s in found.series for v in s.values), default=0.0)


@pytest.mark.timeout(180)
def test_system_metrics_show_and_usage(tmp_path: Path, project: Path, shared: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1, fake_gpus=1, usage_interval_s=0.2)
    try:
        gate = shared / "gate"
        (project / "hold.py").write_text(
            f"import os, time\nx = bytearray({120 * MIB})\nx[::4096] = b'1' * len(x[::4096])\n"
            f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n")
        run_id = cluster.cli("submit", str(project), "-d", "-q", "--gpus", "1", "--cpus", "0.5", "--memory", "1G",
                             "--", "python", "hold.py", check=True).stdout.strip()
        wait_until("a sample of the run holding its memory", lambda: _memory_seen(cluster, run_id) >= 120 * MIB)
        gate.touch()
        run = cluster.wait_state(run_id, "Completed")

        shown = cluster.json("metrics", run_id, "--system")
        values: dict[str, list[float]] = {}
        for point in shown["points"]:
            values.setdefault(point["key"], []).append(point["value"])
        assert max(values["system/memory_bytes"]) >= 120 * MIB      # bytes, not a rounded size
        assert max(values["system/memory_peak_bytes"]) >= 120 * MIB
        assert set(values["system/gpu_0_utilization_percentage"]) == {50.0}   # the fake GPU's
        assert "system/cpu_seconds" in values and "system/cpu_utilization_percentage" in values
        own = cluster.json("metrics", run_id)
        assert not any(p["key"].startswith("system/") for p in own["points"])    # not mixed into the run's own
        table = cluster.cli("metrics", run_id, "--system", check=True).stdout
        assert "system/memory_bytes" in table
        memory_row = next(line for line in table.splitlines() if line.startswith("system/memory_bytes "))
        assert re.search(r"\s\d+(\.\d)?M\s", memory_row), memory_row     # bytes shown as a size, as in `show`

        usage = {u["key"]: u for u in cluster.json("show", run_id)["usage"]}
        assert usage["system/memory_bytes"]["peak"] >= 120 * MIB
        assert 0 < usage["system/memory_bytes"]["mean"] <= usage["system/memory_bytes"]["peak"]
        text = cluster.cli("show", run_id, check=True).stdout
        assert "memory" in text and "peak" in text and "gpu 0" in text

        report = cluster.json("usage")
        [row] = report["rows"]
        assert row["workspace"] == "default" and row["runs"] == 1
        wall_h = (run["ended_at"] - run["started_at"]) / 3600
        assert row["gpu_hours"] == pytest.approx(wall_h, rel=1e-6)
        assert row["cpu_hours_allocated"] == pytest.approx(0.5 * wall_h, rel=1e-6)
        assert row["cpu_hours"] > 0
        before = datetime.fromtimestamp(run["started_at"] - 5).isoformat(timespec="seconds")
        assert cluster.json("usage", "--until", before)["rows"] == []
        assert len(cluster.json("usage", "--since", before)["rows"]) == 1
        assert cluster.json("usage", "--workspace", "*")["rows"] == report["rows"]
        cluster.client().create_workspace("other")
        assert cluster.json("usage", "--workspace", "other")["rows"] == []
        assert "default" in cluster.cli("usage", check=True).stdout
        bad = cluster.cli("usage", "--since", "tomorrow")
        assert bad.returncode != 0 and bad.stderr.startswith("runyard: ") and "Traceback" not in bad.stderr
    finally:
        cluster.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_a_run_over_its_memory_request_fails_alone_as_oom_killed(tmp_path: Path, project: Path,
                                                                  mode: str) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1, run_containment=str(mode), usage_interval_s=0.2)
    try:
        (project / "grow.py").write_text(
            f"import time\nx = bytearray({600 * MIB})\nx[::4096] = b'1' * len(x[::4096])\ntime.sleep(60)\n")
        (project / "calm.py").write_text("import time\ntime.sleep(3)\n")
        neighbour = cluster.cli("submit", str(project), "-d", "-q", "--cpus", "0.5", "--memory", "128M", "--",
                                "python", "calm.py", check=True).stdout.strip()
        greedy = cluster.cli("submit", str(project), "-d", "-q", "--cpus", "0.5", "--memory", "200M", "--",
                             "python", "grow.py", check=True).stdout.strip()
        ended = cluster.wait_state(greedy, "Failed", "Completed", "Canceled", timeout_s=120)
        assert ended["state"] == "Failed" and ended["reason"] == "oom_killed"
        assert ended["exit_code"] == 137
        detail = json.dumps(ended["events"])
        assert "peak" in detail and "over its 200.0M memory request" in detail
        assert cluster.wait_state(neighbour, "Completed", "Failed", "Canceled")["state"] == "Completed"
        assert [n["state"] for n in cluster.nodes()] == ["Ready"]
    finally:
        cluster.stop()
