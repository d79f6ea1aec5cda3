"""A TensorFlow run with real agents: 3 workers and 1 parameter server over 2 nodes (2 processes each), each
printing its TF_CONFIG, read back from `runyard logs RUN --all-ranks`: each node's processes at the ports of the
block the head reserved on every node, from MASTER_PORT up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from testbed.harness import Cluster

SHOW = """\
import os
print("TF " + os.environ["RANK"] + " " + os.environ["WORLD_SIZE"] + " " + os.environ["TF_CONFIG"], flush=True)
"""
LINE = re.compile(r"^\[rank (\d)\] TF (\d) (\d) (.*)$")


@pytest.mark.timeout(120)
def test_three_workers_and_a_parameter_server_on_two_nodes_each_get_tf_config(cluster: Cluster,
                                                                               project: Path) -> None:
    (project / "show.py").write_text(SHOW)
    (project / "job.yml").write_text(
        "command: python show.py\n"
        "resources: {instance_count: 2, properties: {cpus: 1, memory: 1G}}\n"
        "distribution: {type: tensorflow, worker_count: 3, parameter_server_count: 1}\n"
        "limits: {timeout: 90}\n")
    run_id = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"), check=True).stdout.strip()

    shown = cluster.wait_state(run_id, "Completed", "Failed", "Canceled", timeout_s=90)

    logs = cluster.cli("logs", run_id, "--all-ranks", check=True).stdout
    assert shown["state"] == "Completed", (shown["reason"], logs[-3000:])
    found = {int(m[1]): (int(m[2]), int(m[3]), json.loads(m[4]))
             for m in map(LINE.match, logs.splitlines()) if m is not None}
    assert sorted(found) == [0, 1, 2, 3]
    cluster_spec = found[0][2]["cluster"]
    hosts = [*cluster_spec["ps"], *cluster_spec["worker"]]
    assert len(cluster_spec["ps"]) == 1 and len(cluster_spec["worker"]) == 3
    base = int(hosts[0].rpartition(":")[2])
    low, high = map(int, cluster.head.rendezvous_ports.split("-"))
    assert low <= base and base + 1 <= high
    assert [int(h.rpartition(":")[2]) for h in hosts] == [base, base + 1, base, base + 1]   # each node's block
    assert hosts[0].rpartition(":")[0] == hosts[1].rpartition(":")[0]          # processes 0, 1 on node 0
    assert hosts[2].rpartition(":")[0] == hosts[3].rpartition(":")[0]          # processes 2, 3 on node 1
    for rank, (global_rank, world, config) in found.items():
        assert (global_rank, world) == (rank, 4)
        assert config == {"cluster": cluster_spec,
                          "task": {"type": "ps", "index": 0} if rank == 0 else {"type": "worker", "index": rank - 1}}
