"""The autoscaler's local provider with real processes: an agent started for a queued run, stopped when idle."""

from __future__ import annotations

from pathlib import Path

import psutil

from testbed.harness import Cluster, wait_until


def _agents_of(head_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with_config = " ".join(proc.info["cmdline"] or ())
        if "-m agent" in with_config and str(head_dir / "autoscaled") in with_config:
            found.append(proc)
    return found


def _autoscaled(**policy: object) -> dict[str, object]:
    return {
        "autoscaler_tick_s": 0.2,
        "clusters": {"default": {"provider": "local", "min_nodes": 0, "max_nodes": 1, **policy}},
        "local_agent_settings": {"heartbeat_interval_s": 0.5, "reconnect_max_s": 0.5},
    }


def test_local_provider_starts_an_agent_for_a_queued_run_and_stops_it_when_idle(tmp_path: Path, project: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=0, head_settings=_autoscaled(idle_time_before_scale_down=1.0))
    try:
        assert _agents_of(cluster.head.data_dir) == []
        result = cluster.cli("submit", str(project), "--", "echo", "on a fresh node")
        assert result.returncode == 0 and result.stdout == "on a fresh node\n", result.stderr
        run = cluster.json("runs")[0]
        assert run["node"] == "auto-default-1"

        wait_until("the idle agent to be stopped", lambda: not _agents_of(cluster.head.data_dir), timeout_s=30)
        decisions = cluster.cli("nodes", check=True).stdout
        assert "starting 1 (1 of max 1)" in decisions, decisions
        assert "auto-default-1 idle for 1s; stopping it (0 left, min 0)" in decisions, decisions
        wait_until("the stopped node to be Left, not a silent node",
                   lambda: cluster.nodes()[0]["state"] == "Left")
        assert cluster.json("nodes", "auto-default-1")["events"][-1]["detail"] == "the autoscaler stopped auto-default-1"
    finally:
        cluster.stop()


def test_queue_says_the_autoscaler_is_starting_a_node(tmp_path: Path, project: Path) -> None:
    settings = _autoscaled(launch_timeout_s=60.0)
    settings["require_node_approval"] = True    # the agent enrolls, but waits for an admin: never Ready
    cluster = Cluster.start(tmp_path / "cluster", agents=0, head_settings=settings)
    try:
        run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "true", check=True).stdout.strip()
        reason = wait_until("the autoscaler in the reason", lambda: "autoscaler" in (
            r := cluster.run(run_id)["pending_reason"]) and r)
        assert reason == "no node in cluster default is up; autoscaler starting 1"
        assert "autoscaler starting 1" in cluster.cli("queue", check=True).stdout
    finally:
        cluster.stop()
    wait_until("the head to stop its agent", lambda: not _agents_of(cluster.head.data_dir), timeout_s=30)
