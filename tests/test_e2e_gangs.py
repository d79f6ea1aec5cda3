"""Multi-node runs with real agents: placed on all their nodes together, one child run per node, failing as one."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from protos import runyard_pb2 as pb
from runyard.errors import InvalidArgument
from testbed.harness import Cluster, wait_until


def _children(cluster: Cluster, parent: str) -> list[dict[str, Any]]:
    children = [r for r in cluster.json("runs", "--limit", "100") if r["parent_run_id"] == parent]
    return sorted(children, key=lambda r: r["properties"]["runyard.node_rank"])


def test_two_node_run_starts_on_both_nodes_with_ranks(cluster: Cluster, project: Path, shared: Path) -> None:
    barrier = shared / "barrier"
    barrier.mkdir()
    barrier.chmod(0o777)  # runs (uids of their own) add files to it
    (project / "gang.py").write_text(
        "import os, time\n"
        "rank, world = os.environ['NODE_RANK'], os.environ['WORLD_SIZE']\n"
        f"open(os.path.join({str(barrier)!r}, rank), 'w').close()\n"
        f"while len(os.listdir({str(barrier)!r})) < int(world): time.sleep(0.01)\n"  # both ranks run at once
        "print(f'rank {rank} of {world}', flush=True)\n"
    )
    result = cluster.cli("submit", str(project), "--nodes", "2", "--", "python", "gang.py")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["rank 0 of 2", "rank 1 of 2"]

    parent = cluster.json("runs", "--limit", "100")
    parent_run = next(r for r in parent if r["spec"]["resources"]["instance_count"] == 2)
    shown = cluster.run(parent_run["id"])
    assert shown["state"] == "Completed"
    assert [e["to_state"] for e in shown["events"]] == ["Queued", "Preparing", "Running", "Completed"]
    children = _children(cluster, shown["id"])
    assert [c["state"] for c in children] == ["Completed", "Completed"]
    assert {c["node"] for c in children} == {"node-1", "node-2"}
    assert [c["spec"]["environment"]["NODE_RANK"] for c in children] == ["0", "1"]
    rank1 = cluster.cli("logs", shown["id"], "--rank", "1", check=True).stdout
    assert rank1 == "rank 1 of 2\n"


def test_a_failing_child_cancels_its_sibling_and_fails_the_parent(cluster: Cluster, project: Path) -> None:
    (project / "fail1.py").write_text(
        "import os, sys, time\n"
        "if os.environ['NODE_RANK'] == '1':\n"
        "    sys.exit(3)\n"
        "time.sleep(600)\n"
    )
    result = cluster.cli("submit", str(project), "--nodes", "2", "--", "python", "fail1.py")
    assert result.returncode == 3, result.stderr
    parent = next(r for r in cluster.json("runs", "--limit", "100") if r["display_name"] == "python fail1.py"
                  and not r["parent_run_id"])
    assert (parent["state"], parent["reason"]) == ("Failed", "sibling_failed")
    children = wait_until("the sibling to be stopped", lambda: (
        c := _children(cluster, parent["id"])) and all(x["state"] in ("Failed", "Canceled") for x in c) and c)
    assert [(c["state"], c["reason"]) for c in children] == [("Canceled", "sibling_failed"), ("Failed", "exit_code")]


def test_a_gang_waits_for_all_its_nodes(cluster: Cluster, project: Path, shared: Path) -> None:
    gate = shared / "gate"
    (project / "hold.py").write_text(f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n")
    cpus = int(cluster.json("nodes")[0]["capacity"]["cpus"])
    blocker = cluster.cli("submit", str(project), "-d", "-q", "--cpus", str(cpus), "--", "python", "hold.py",
                          check=True).stdout.strip()
    cluster.wait_state(blocker, "Running")
    gang = cluster.cli("submit", str(project), "-d", "-q", "--nodes", "2", "--cpus", str(cpus), "--", "true",
                       check=True).stdout.strip()
    reason = wait_until("the gang's reason", lambda: "fit now" in (r := cluster.run(gang)["pending_reason"]) and r)
    assert reason.startswith("waiting for 2 nodes with") and reason.endswith("in cluster default; 1 fit now")
    assert _children(cluster, gang) == [], "nothing of the gang started on the free node"
    gate.touch()
    assert cluster.wait_state(gang, "Completed")["state"] == "Completed"


def test_canceling_the_parent_stops_every_child(cluster: Cluster, project: Path) -> None:
    (project / "forever.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    parent = cluster.cli("submit", str(project), "-d", "-q", "--nodes", "2", "--", "python", "forever.py",
                         check=True).stdout.strip()
    cluster.wait_state(parent, "Running")
    cluster.cli("cancel", parent, check=True)
    assert (shown := cluster.wait_state(parent, "Canceled"))["reason"] == "canceled_by_user", shown
    assert [(c["state"], c["reason"]) for c in _children(cluster, parent)] == [("Canceled", "parent_canceled")] * 2


def test_the_head_refuses_a_distribution_it_does_not_know(cluster: Cluster) -> None:
    request = pb.SubmitRequest(snapshot_sha256="0" * 64, spec=pb.RunSpec(
        argv=["true"], distribution=pb.Distribution(type="ray", process_count_per_instance=2)))

    with pytest.raises(InvalidArgument,
                       match="distribution type 'ray' is not supported; only pytorch, mpi or tensorflow"):
        cluster.client().submit(request)


@pytest.mark.parametrize(("distribution", "message"), [
    ("{type: pytorch, process_count_per_instance: 4}",
     "process_count_per_instance 4 is more than the 2 GPUs per node it requests; ask for gpus: 4 or fewer processes"),
    ("{type: tensorflow, worker_count: 5, parameter_server_count: 1}",
     "6 tensorflow processes on 2 nodes put 3 on a node, more than the 2 GPUs per node it requests; "
     "ask for gpus: 3 or more nodes")])
def test_more_processes_per_node_than_its_gpus_is_refused_at_submit(cluster: Cluster, project: Path,
                                                                     distribution: str, message: str) -> None:
    (project / "job.yml").write_text(
        "command: python hello.py\n"
        "resources: {instance_count: 2, properties: {cpus: 1, memory: 1G, gpus: 2}}\n"
        f"distribution: {distribution}\n")
    before = cluster.json("runs", "--limit", "100")

    refused = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"))

    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == f"runyard: {message}"
    assert cluster.json("runs", "--limit", "100") == before


@pytest.mark.timeout(60)
def test_a_gang_whose_master_port_another_program_holds_fails_naming_the_port(cluster: Cluster,
                                                                               project: Path) -> None:
    low, high = map(int, cluster.head.rendezvous_ports.split("-"))
    held = []
    try:
        for port in range(low, high + 1):       # whichever port the head picks, another program holds it here
            holder = socket.socket()
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                holder.bind(("", port))
            except OSError:                     # held already, by someone else
                holder.close()
                continue
            holder.listen()
            held.append(holder)
        (project / "job.yml").write_text(
            "command: python hello.py\n"
            "resources: {instance_count: 2, properties: {cpus: 1, memory: 1G}}\n"
            "distribution: {type: pytorch, process_count_per_instance: 1}\n")
        parent = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"), check=True).stdout.strip()

        shown = cluster.wait_state(parent, "Completed", "Failed", "Canceled", timeout_s=45)
    finally:
        for holder in held:
            holder.close()

    assert (shown["state"], shown["reason"], shown["exit_code"]) == ("Failed", "sibling_failed", 127)
    line = re.compile(r"cannot start the run: MASTER_PORT (\d+) is in use on this node \(another program holds it\)")
    found = wait_until("rank 0's line saying why", lambda: line.search(   # its lines are shipped after it ended
        cluster.cli("logs", parent, "--rank", "0", "--stream", "system", check=True).stderr))    # [runyard] lines
    assert low <= int(found[1]) <= high
