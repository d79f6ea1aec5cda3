"""Faults where the head and its agents meet, with real processes and shortened timers: a frozen agent (SIGSTOP)
past the Down timer and past its own cut-off, a second agent under a name in use, a head whose disk fills up."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos import runyard_pb2 as pb
from protos import runyard_pb2_grpc as pb_grpc
from runyard import pki
from testbed.harness import Agent, Cluster, Head, process_gone, start_agent_process, wait_until

FAST_HEAD = {"disconnected_after_s": 1.0, "down_after_s": 3.0}


def _waiting_script(project: Path, gate: Path) -> None:
    (project / "wait.py").write_text(
        f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\nprint('done', flush=True)\n")


def _pid(run: dict[str, Any], attempt: int) -> int:
    starts = [e["detail"] for e in run["events"] if e["event"] == "start"]
    return int(re.fullmatch(r"pid (\d+)", starts[attempt - 1]).group(1))  # type: ignore[union-attr]


def _node_state(cluster: Cluster, name: str) -> str:
    return next(n["state"] for n in cluster.nodes() if n["name"] == name)


def _agent(cluster: Cluster, run: dict[str, Any]) -> Agent:
    return next(a for a in cluster.agents if a.name == run["node"])


@pytest.fixture
def frozen() -> Iterator[list[Agent]]:
    """Agents a test SIGSTOPped; continued whatever happens, so that they can be stopped."""
    stopped: list[Agent] = []
    yield stopped
    for agent in stopped:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGCONT)


def test_a_node_frozen_past_down_is_declared_down_once_and_its_stale_attempt_stopped_on_return(
        tmp_path: Path, project: Path, frozen: list[Agent], shared: Path) -> None:
    gate = shared / "gate"
    _waiting_script(project, gate)
    # The healthy agent heartbeats 15 times per Down timer, so that only the frozen one goes Down on a busy machine.
    cluster = Cluster.start(tmp_path / "cluster", agents=2, head_settings=FAST_HEAD, stop_runs_after_s=600.0,
                            heartbeat_interval_s=0.2)
    try:
        run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "wait.py", check=True).stdout.strip()
        first = cluster.wait_state(run_id, "Running")
        victim = _agent(cluster, first)
        stale_pid = _pid(first, 1)
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGSTOP)     # its TCP stream stays open
        frozen.append(victim)

        wait_until("the frozen node to be Down", lambda: _node_state(cluster, victim.name) == "Down")
        second = cluster.wait_state(run_id, "Running")
        assert second["attempt"] == 2 and second["node"] != victim.name, "never placed again on the silent node"
        # Several reaper ticks later it is still Down, and the run was requeued exactly once.
        wait_until("a few reaper ticks", lambda: cluster.run(run_id)["state"] == "Running" and
                   len([e for e in cluster.json("nodes", victim.name)["events"] if e["to_state"] == "Down"]) == 1)
        history = cluster.json("nodes", victim.name)["events"]
        assert [e["to_state"] for e in history if e["event"] in ("silent", "down")] == ["Disconnected", "Down"]

        victim.proc.send_signal(signal.SIGCONT)     # it wakes up still running attempt 1
        wait_until("the stale attempt to be stopped", lambda: process_gone(stale_pid))
        wait_until("the node to come back", lambda: _node_state(cluster, victim.name) == "Ready")

        gate.touch()
        done = cluster.wait_state(run_id, "Completed")
        assert done["attempt"] == 2
        assert [e["event"] for e in done["events"]].count("requeue") == 1
    finally:
        cluster.stop()


def test_an_agent_that_stops_its_runs_after_its_cut_off_gets_them_requeued_not_failed(
        tmp_path: Path, project: Path, frozen: list[Agent], shared: Path) -> None:
    gate = shared / "gate"
    _waiting_script(project, gate)
    cluster = Cluster.start(tmp_path / "cluster", agents=1, head_settings={"disconnected_after_s": 1.0,
                                                                           "down_after_s": 120.0},
                            stop_runs_after_s=1.5)
    try:
        run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "wait.py", check=True).stdout.strip()
        first = cluster.wait_state(run_id, "Running")
        agent = cluster.agents[0]
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)      # longer than its cut-off, far shorter than the head's Down
        frozen.append(agent)
        wait_until("the head to notice the silence", lambda: _node_state(cluster, agent.name) == "Disconnected")
        _sleep_past_cut_off(2.5)
        agent.proc.send_signal(signal.SIGCONT)      # it stops its run at once, saying why

        wait_until("the stopped attempt to be gone", lambda: process_gone(_pid(first, 1)))
        again = wait_until("attempt 2 to run", lambda: (r := cluster.run(run_id))["attempt"] == 2
                           and r["state"] == "Running" and r)
        requeue = next(e for e in again["events"] if e["event"] == "requeue")
        assert "cut" in requeue["detail"], requeue
        gate.touch()
        done = cluster.wait_state(run_id, "Completed")
        assert "Failed" not in [e["to_state"] for e in done["events"]]
    finally:
        cluster.stop()


def _sleep_past_cut_off(seconds: float) -> None:
    """Keep an agent frozen for a time: the one wait here that is about time itself, not readiness."""
    subprocess.run(["sleep", str(seconds)], check=True)


def test_a_join_for_a_name_held_by_a_live_agent_is_refused_naming_the_holder(tmp_path: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1)
    try:
        join_token = cluster.head.join_token(uses=2)
        csr = pki.node_csr("any", pki.new_key())
        with grpc.secure_channel(cluster.head.address, grpc.ssl_channel_credentials(cluster.head.ca_pem)) as channel:
            stub = pb_grpc.NodeAgentStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Join(pb.JoinRequest(name="node-1", cluster="default", csr=csr),
                          metadata=(("authorization", f"Bearer {join_token}"),), timeout=10)
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "node-1" in refused.value.details() and "held by a live agent" in refused.value.details()
            assert "since" in refused.value.details()
            # The live agent keeps its credential: it still answers as Ready, and another name is welcome.
            stub.Join(pb.JoinRequest(name="node-2", cluster="default", csr=csr),
                      metadata=(("authorization", f"Bearer {join_token}"),), timeout=10)
        assert _node_state(cluster, "node-1") == "Ready"
    finally:
        cluster.stop()


def test_a_second_agent_under_a_name_in_use_exits_with_one_line_and_the_first_keeps_its_run(
        tmp_path: Path, project: Path, shared: Path) -> None:
    gate = shared / "gate"
    _waiting_script(project, gate)
    cluster = Cluster.start(tmp_path / "cluster", agents=1)
    try:
        run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "wait.py", check=True).stdout.strip()
        cluster.wait_state(run_id, "Running")
        twin = start_agent_process("node-1", tmp_path / "twin", tmp_path / "twin.log",
                                   cluster.head.agent_settings(),
                                   stderr=subprocess.PIPE)
        _, err = twin.communicate(timeout=30)
        last = err.decode().strip().splitlines()[-1]      # its log lines go to stderr too; the verdict is last
        assert twin.returncode == 2 and "Traceback" not in err.decode(), err.decode()
        assert last.startswith("runyard-agent: node name 'node-1' is held by a live agent connected from")
        gate.touch()
        done = cluster.wait_state(run_id, "Completed")
        assert done["attempt"] == 1, "the first agent's run was never disturbed"
        assert [e["event"] for e in cluster.json("nodes", "node-1")["events"]].count("join") == 1
    finally:
        cluster.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB filesystem of its own for the head's data, so that the test can fill it."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_on_the_head_refuses_clearly_and_agents_deliver_everything_once_space_returns(
        tmp_path: Path, project: Path, small_disk: Path, shared: Path) -> None:
    gate = shared / "gate"
    (project / "chatty.py").write_text(
        "import os, time\ni = 0\n"
        f"while not os.path.exists({str(gate)!r}) or i < 400:\n"
        "    print(f'line {i}', flush=True)\n    i += 1\n    time.sleep(0.005)\n")
    # The agent is cut off from a full head for a while: it must not be declared Down meanwhile.
    cluster = Cluster(tmp_path / "cluster", Head(small_disk / "head", tmp_path / "head.log", {}))
    cluster.head.start()
    cluster.add_agent("node-1")
    cluster.wait_nodes_ready(1)
    try:
        run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "chatty.py", check=True).stdout.strip()
        cluster.wait_state(run_id, "Running")
        filler = _fill(small_disk)
        refused = cluster.cli("submit", str(project), "-d", "-q", "--", "echo", "no room")
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert "disk is full" in refused.stderr, refused.stderr
        agent_log = cluster.agents[0].log_file
        wait_until("the agent to say the head is out of space, once",
                   lambda: agent_log.read_text().count("head out of space") == 1, timeout_s=30)
        filler.unlink()
        gate.touch()
        cluster.wait_state(run_id, "Completed", timeout_s=60)
        lines = cluster.logs_text(run_id).splitlines()
        assert lines == [f"line {i}" for i in range(len(lines))] and len(lines) >= 400, "every line once, in order"
        assert cluster.cli("submit", str(project), "-q", "--", "echo", "room again").returncode == 0
        log_text = agent_log.read_text()
        assert log_text.count("head out of space") == 1 and "delivery resumed" in log_text
    finally:
        cluster.stop()


def test_nodes_name_shows_the_node_history(tmp_path: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1)
    try:
        cluster.cli("node", "cordon", "node-1", check=True)
        shown = cluster.cli("nodes", "node-1", check=True).stdout
        assert "Ready" in shown and "cordoned" in shown
        events = [(e["event"], e["from_state"], e["to_state"]) for e in cluster.json("nodes", "node-1")["events"]]
        assert events[:2] == [("join", "", "Joining"), ("hello", "Joining", "Ready")]
        assert events[-1] == ("cordon", "active", "cordoned")
        missing = cluster.cli("nodes", "nosuch")
        assert missing.returncode != 0 and "no node 'nosuch'" in missing.stderr and "Traceback" not in missing.stderr
    finally:
        cluster.stop()

