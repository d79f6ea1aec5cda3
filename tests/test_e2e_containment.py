"""A run's whole process tree dies with its agent and with its cancel: real head, real agents, both containments."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from testbed.harness import Cluster, process_gone, wait_until
from tests.places import attempt_dirs
from tests.test_agent_containment import MODES, TREE, cgroups_usable, tree_pids


def submit_tree(cluster: Cluster, project: Path) -> str:
    (project / "tree.sh").write_text(TREE)
    return cluster.cli("submit", str(project), "-d", "-q", "--", "sh", "tree.sh", check=True).stdout.strip()


def run_dir(cluster: Cluster, run_id: str) -> Path:
    return attempt_dirs(cluster.agents[0].data_dir, run_id).code


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


def watcher_of(agent_pid: int) -> int:
    """The cgroup watcher process the agent started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == agent_pid and b"cgroup_watch.py" in cmdline:
            return int(entry.name)
    raise AssertionError(f"agent {agent_pid} has no cgroup watcher")


@pytest.mark.timeout(90)
@pytest.mark.skipif(not cgroups_usable(), reason="no writable cgroup v2")
def test_a_restarted_agent_kills_what_its_predecessors_runs_left(tmp_path: Path, project: Path) -> None:
    """Even when the watcher died with the agent, the next agent process on that data dir kills the leftovers."""
    cluster = Cluster.start(tmp_path / "cluster", agents=1, run_containment="cgroup")
    try:
        run_id = submit_tree(cluster, project)
        pids = wait_until("the run's tree to start", lambda: tree_pids(run_dir(cluster, run_id)))
        agent = cluster.agents[0]
        assert agent.proc is not None
        os.kill(watcher_of(agent.proc.pid), signal.SIGKILL)
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()
        assert not any(map(process_gone, pids)), "with the watcher gone too, the run's processes are left"
        agent.start(cluster.head)
        wait_until("the new agent to kill the leftovers", lambda: all(map(process_gone, pids)), timeout_s=10)
        wait_until("the new agent to say so", lambda: "killed runs left by a previous agent process" in
                   agent.log_file.read_text())
    finally:
        cluster.stop()
