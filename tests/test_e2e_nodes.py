"""Node lifecycle with real processes: an agent lost mid-run."""

from __future__ import annotations

import signal
from pathlib import Path

from testbed.harness import Cluster, process_gone, wait_until


def test_agent_killed_mid_run_is_requeued_on_another_agent(tmp_path: Path, project: Path, shared: Path) -> None:
    # Heartbeats 10x faster than the Down timer, so that on a loaded machine only the killed agent goes Down.
    cluster = Cluster.start(tmp_path / "cluster", agents=2, heartbeat_interval_s=0.2,
                            head_settings={"disconnected_after_s": 1.0, "down_after_s": 2.0})
    try:
        pid_file = shared / "attempt1.pid"
        (project / "work.py").write_text(
            "import os, sys, time\n"
            "attempt = os.environ['RUNYARD_ATTEMPT']\n"
            "print(f'attempt {attempt} started', flush=True)\n"
            "if attempt == '1':\n"
            f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
            "    time.sleep(600)\n"
            "print(f'attempt {attempt} done')\n"
        )
        run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "work.py", check=True).stdout.strip()
        wait_until("attempt 1 to run", pid_file.exists)
        # What the head has stored before the kill is kept; what the agent had not shipped yet dies with it.
        wait_until("attempt 1's first line to be stored", lambda: "attempt 1 started" in cluster.logs_text(run_id))
        first = cluster.run(run_id)
        victim = next(a for a in cluster.agents if a.name == first["node"])
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()

        run = cluster.wait_state(run_id, "Completed")
        assert run["attempt"] == 2 and run["node"] != first["node"]
        assert [e["event"] for e in run["events"]].count("requeue") == 1
        requeue = next(e for e in run["events"] if e["event"] == "requeue")
        assert "went down" in requeue["detail"]
        logs = cluster.logs_text(run_id)
        assert "[attempt 1] attempt 1 started" in logs and "[attempt 2] attempt 2 done" in logs

        wait_until("attempt 1's process to be gone", lambda: process_gone(int(pid_file.read_text())), timeout_s=10)
        nodes = {n["name"]: n["state"] for n in cluster.json("nodes")}
        assert nodes[first["node"]] == "Down"
    finally:
        cluster.stop()


def test_a_quiet_run_is_not_stopped_by_the_agent_while_the_head_is_there(tmp_path: Path, project: Path) -> None:
    """The agent stops its runs only when the head is silent; heartbeats are answered even when nothing else is."""
    cluster = Cluster.start(tmp_path / "cluster", agents=1, heartbeat_interval_s=0.2, stop_runs_after_s=1.0)
    try:
        (project / "quiet.py").write_text("import time\ntime.sleep(3)\n")  # no output for 3 times the cut-off
        result = cluster.cli("submit", str(project), "--", "python", "quiet.py")
        assert result.returncode == 0, result.stderr
        assert "cut off" not in (cluster.root / "node-1.log").read_text()
    finally:
        cluster.stop()


def test_a_gang_that_loses_a_node_is_requeued_whole(tmp_path: Path, project: Path, shared: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=3, heartbeat_interval_s=0.2,
                            head_settings={"disconnected_after_s": 1.0, "down_after_s": 2.0})
    try:
        marks = shared / "marks"
        marks.mkdir()
        marks.chmod(0o777)  # runs (uids of their own) add files to it
        (project / "gang.py").write_text(
            "import os, time\n"
            f"mark = os.path.join({str(marks)!r}, os.environ['NODE_RANK'])\n"
            "if os.path.exists(mark):\n"
            "    print('second attempt', flush=True)\n"
            "else:\n"
            "    open(mark, 'w').write(str(os.getpid()))\n"
            "    time.sleep(600)\n"
        )
        parent = cluster.cli("submit", str(project), "-d", "-q", "--nodes", "2", "--", "python", "gang.py",
                             check=True).stdout.strip()
        cluster.wait_state(parent, "Running")
        children = [r for r in cluster.json("runs") if r["parent_run_id"] == parent]
        lost = next(c for c in children if c["properties"]["runyard.node_rank"] == "1")
        victim = next(a for a in cluster.agents if a.name == lost["node"])
        assert victim.proc is not None
        victim.proc.kill()
        victim.proc.wait()

        done = cluster.wait_state(parent, "Completed")
        assert done["attempt"] == 2
        requeue = next(e for e in done["events"] if e["event"] == "requeue")
        assert requeue["detail"] == f"rank 1: node {lost['node']} went down"
        runs = {r["id"]: r for r in cluster.json("runs") if r["parent_run_id"] == parent}
        assert (runs[lost["id"]]["state"], runs[lost["id"]]["reason"]) == ("Failed", "node_lost")
        first = [r for r in runs.values() if r["properties"]["runyard.parent_attempt"] == "1"]
        second = [r for r in runs.values() if r["properties"]["runyard.parent_attempt"] == "2"]
        assert sorted((r["state"], r["reason"]) for r in first) == [("Canceled", "sibling_failed"), ("Failed", "node_lost")]
        assert [r["state"] for r in second] == ["Completed", "Completed"]
        assert all(r["node"] != lost["node"] for r in second)
    finally:
        cluster.stop()
