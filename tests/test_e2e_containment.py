"""A run's whole process tree dies with its agent and with its cancel: real head, real agents, both containments."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.harness import Cluster, process_gone, wait_until
from tests.test_agent_containment import MODES, TREE, tree_pids


def submit_tree(cluster: Cluster, project: Path) -> str:
    (project / "tree.sh").write_text(TREE)
    return cluster.cli("submit", str(project), "-d", "-q", "--", "sh", "tree.sh", check=True).stdout.strip()


def run_dir(cluster: Cluster, run_id: str) -> Path:
    return cluster.agents[0].data_dir / "runs" / run_id / "1" / "code"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_no_process_of_a_run_outlives_a_killed_agent(tmp_path: Path, project: Path, mode: str) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1, run_containment=str(mode))
    try:
        run_id = submit_tree(cluster, project)
        pids = wait_until("the run's tree to start", lambda: tree_pids(run_dir(cluster, run_id)))
        main_pid = int(next(e["detail"] for e in cluster.wait_state(run_id, "Running")["events"]
                            if e["event"] == "start").split()[-1])
        agent = cluster.agents[0]
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()
        wait_until("every process of the run to be gone", lambda: all(map(process_gone, [main_pid, *pids])),
                   timeout_s=2)
    finally:
        cluster.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_cancel_kills_a_grandchild_in_a_session_of_its_own(tmp_path: Path, project: Path, mode: str) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1, run_containment=str(mode))
    try:
        run_id = submit_tree(cluster, project)
        pids = wait_until("the run's tree to start", lambda: tree_pids(run_dir(cluster, run_id)))
        cluster.cli("cancel", run_id, check=True)
        run = cluster.wait_state(run_id, "Canceled")
        assert run["reason"] == "canceled_by_user"
        wait_until("every process of the run to be gone", lambda: all(map(process_gone, pids)), timeout_s=5)
        assert cluster.agents[0].proc is not None and cluster.agents[0].proc.poll() is None
    finally:
        cluster.stop()
