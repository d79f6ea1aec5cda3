"""A shared cluster that trusts nobody, end to end through the CLI and real agent processes: workspaces and tokens,
submitters, snapshots per workspace, and node enrollment (join tokens' uses and TTL, a name bound to one key,
removal, approval, capacity limits)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from runyard.client import Client
from testbed.harness import Cluster, start_agent_process, wait_until

pytestmark = pytest.mark.timeout(120)


def _secret(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


def _token(cluster: Cluster, *args: str) -> str:
    return _secret(cluster.cli("token", "create", *args, check=True))


def _state(cluster: Cluster, name: str) -> dict[str, Any]:
    return next((n for n in cluster.nodes() if n["name"] == name), {})


def _refused_agent(cluster: Cluster, tmp_path: Path, name: str, settings: dict[str, Any]) -> str:
    """Start an agent that the head must refuse; returns its last line (the verdict) after checking it exits 2."""
    agent = start_agent_process(name, tmp_path / name, tmp_path / f"{name}.log", settings, stderr=subprocess.PIPE)
    _, err = agent.communicate(timeout=60)
    text = err.decode()
    assert agent.returncode == 2 and "Traceback" not in text, text
    return text.strip().splitlines()[-1]


def test_a_workspace_sees_nothing_of_another_and_a_revoked_token_is_refused(cluster: Cluster, project: Path) -> None:
    run_id = cluster.cli("submit", str(project), "-q", "--", "python", "hello.py", check=True).stdout.split()[0]
    cluster.cli("workspace", "create", "team-b", check=True)
    assert "team-b" in [w["name"] for w in cluster.json("workspace", "list")]
    secret = _token(cluster, "--workspace", "team-b", "--role", "user", "--name", "bob")
    as_bob = cluster.env(RUNYARD_TOKEN=secret)
    shown = cluster.cli("show", run_id, env=as_bob)
    assert shown.returncode == 1 and f"no run '{run_id}'" in shown.stderr
    assert run_id not in cluster.cli("runs", "-o", "json", env=as_bob, check=True).stdout
    (token,) = [t for t in cluster.json("token", "list") if t["name"] == "bob"]
    assert (token["workspace"], token["role"]) == ("team-b", "user") and secret not in str(token)
    cluster.cli("token", "revoke", token["id"], check=True)
    refused = cluster.cli("runs", env=as_bob)
    assert refused.returncode == 1 and f"token {token['id']} was revoked" in refused.stderr


def test_runs_record_their_submitter_and_list_by_user(cluster: Cluster, project: Path) -> None:
    alice = cluster.env(RUNYARD_TOKEN=_token(cluster, "--name", "alice"))
    run_id = cluster.cli("submit", str(project), "-q", "--", "python", "hello.py", env=alice, check=True).stdout.split()[0]
    assert cluster.run(run_id)["submitter"] == "alice"
    shown = [line for line in cluster.cli("show", run_id, check=True).stdout.splitlines() if "submitted by" in line]
    assert len(shown) == 1 and "alice" in shown[0]
    mine = cluster.json("runs", "--user", "alice")
    assert [r["id"] for r in mine] == [run_id]


def test_a_snapshot_is_usable_only_by_workspaces_that_uploaded_it(cluster: Cluster, project: Path) -> None:
    first = cluster.cli("submit", str(project), "-q", "--", "python", "hello.py", check=True).stdout.split()[0]
    sha = cluster.run(first)["snapshot_sha256"]
    cluster.cli("workspace", "create", "team-c", check=True)
    carol = cluster.env(RUNYARD_TOKEN=_token(cluster, "--workspace", "team-c", "--name", "carol"))
    with Client(cluster.head.client_config(token=carol["RUNYARD_TOKEN"])) as client:
        assert not client.has_snapshot(sha), "knowing a sha256 is not enough"
    # Submitting the same code uploads it (proving the caller has the bytes) and then runs it.
    again = cluster.cli("submit", str(project), "-q", "--", "python", "hello.py", env=carol, check=True)
    assert "hello from the run" in again.stdout
    with Client(cluster.head.client_config(token=carol["RUNYARD_TOKEN"])) as client:
        assert client.has_snapshot(sha)


def test_a_join_token_buys_its_uses_until_its_ttl_and_a_name_keeps_its_key(tmp_path: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=0)
    try:
        head = cluster.head
        base = {"head_address": head.address, "head_node_address": head.node_address, "head_ca_file": str(head.ca_file)}
        once = head.join_token(uses=1)
        cluster.add_agent("first", join_token=once)
        cluster.wait_nodes_ready(1)
        spent = _refused_agent(cluster, tmp_path, "second", {**base, "join_token": once})
        assert "no use left" in spent
        expired = head.join_token(uses=5, ttl_s=0.001)
        assert "expired" in _refused_agent(cluster, tmp_path, "third", {**base, "join_token": expired})
        # The same name with another key, even while its agent is stopped: refused.
        cluster.agents[0].stop()
        wait_until("first to be disconnected", lambda: _state(cluster, "first")["state"] != "Ready")
        taken = _refused_agent(cluster, tmp_path, "first", {**base, "join_token": head.join_token()})
        assert "enrolled with another key" in taken
        assert [n["name"] for n in cluster.nodes()] == ["first"]
    finally:
        cluster.stop()


def test_a_removed_node_loses_its_certificate_and_its_name_is_free_again(tmp_path: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1)
    try:
        agent = cluster.agents[0]
        cluster.cli("node", "remove", "node-1", check=True)
        assert agent.proc is not None
        agent.proc.wait(timeout=60)      # its certificate refused, its one-use join token spent: it ends
        assert agent.proc.returncode == 2
        assert "refused to enroll" in agent.log_file.read_text()
        assert _state(cluster, "node-1")["state"] == "Left"
        events = cluster.json("nodes", "node-1")["events"]
        assert any(e["event"] == "remove" for e in events)
        fresh = start_agent_process("node-1", tmp_path / "fresh", tmp_path / "fresh.log", cluster.head.agent_settings())
        try:
            wait_until("the name enrolled with a new key", lambda: _state(cluster, "node-1").get("state") == "Ready")
        finally:
            fresh.terminate()
            fresh.wait(timeout=30)
    finally:
        cluster.stop()


def test_with_approval_required_a_new_node_waits_for_an_admin(tmp_path: Path, project: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=0, head_settings={"require_node_approval": True})
    try:
        cluster.add_agent("newcomer")
        wait_until("the node to be enrolled", lambda: _state(cluster, "newcomer"))
        node = cluster.json("nodes", "newcomer")
        assert node["awaiting_approval"] is True and node["state"] != "Ready"
        cluster.cli("node", "approve", "newcomer", check=True)
        cluster.wait_nodes_ready(1)
        done = cluster.cli("submit", str(project), "-q", "--", "python", "hello.py", check=True)
        assert "hello from the run" in done.stdout
    finally:
        cluster.stop()


def test_a_node_advertising_more_than_the_admin_limits_is_refused(tmp_path: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=0, head_settings={"node_max_gpus": 2})
    try:
        verdict = _refused_agent(cluster, tmp_path, "greedy", {**cluster.head.agent_settings(), "fake_gpus": 8})
        assert "advertises more than this cluster allows a node: GPUs 8 (at most 2)" in verdict
        assert cluster.nodes() == []
    finally:
        cluster.stop()


def test_an_enrolled_agent_holds_no_cryptography_library(cluster: Cluster, project: Path) -> None:
    """The node's key and CSR are made by `agent.keytool` in a process of its own: the agent's memory never maps
    cryptography's native library, not even right after enrolling."""
    agent = cluster.agents[0]
    assert (agent.data_dir / "node.key").exists() and (agent.data_dir / "node.crt").exists()
    assert cluster.cli("submit", str(project), "--", "python", "hello.py").returncode == 0
    maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
    assert "cygrpc" in maps                     # the agent's own map, gRPC loaded
    assert "cryptography" not in maps
