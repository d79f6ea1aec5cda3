"""An MPI run with real agents: 2 nodes x 2 processes, each printing its variables and the hostfile, read back from
`runyard logs RUN --all-ranks`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testbed.harness import Cluster

SHOW = """\
import os
names = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
         "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "AZ_BATCH_MASTER_NODE", "MASTER_ADDR",
         "MASTER_PORT", "RUNYARD_NODE_ADDRESSES"]
print("VARS " + " ".join(f"{n}={os.environ[n]}" for n in names), flush=True)
with open(os.environ["RUNYARD_HOSTFILE"]) as f:
    print("HOSTFILE " + "|".join(f.read().splitlines()), flush=True)
"""
LINE = re.compile(r"^\[rank (\d)\] (VARS|HOSTFILE) (.*)$")


@pytest.mark.timeout(120)
def test_two_nodes_of_two_mpi_processes_each_get_their_ranks_and_the_hostfile(cluster: Cluster, project: Path) -> None:
    (project / "show.py").write_text(SHOW)
    (project / "job.yml").write_text(
        "command: python show.py\n"
        "resources: {instance_count: 2, properties: {cpus: 1, memory: 1G}}\n"
        "distribution: {type: mpi, process_count_per_instance: 2}\n"
        "limits: {timeout: 90}\n")
    run_id = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"), check=True).stdout.strip()

    shown = cluster.wait_state(run_id, "Completed", "Failed", "Canceled", timeout_s=90)

    logs = cluster.cli("logs", run_id, "--all-ranks", check=True).stdout
    assert shown["state"] == "Completed", (shown["reason"], logs[-3000:])
    found: dict[tuple[int, str], str] = {}
    for line in logs.splitlines():
        if (m := LINE.match(line)) is not None:
            found[(int(m[1]), m[2])] = m[3]
    assert sorted(found) == [(r, kind) for r in range(4) for kind in ("HOSTFILE", "VARS")]
    first = dict(v.split("=", 1) for v in found[(0, "VARS")].split())
    addresses = first["RUNYARD_NODE_ADDRESSES"].split(",")
    assert len(addresses) == 2 and first["MASTER_ADDR"] == addresses[0] and first["MASTER_PORT"].isdigit()
    for rank in range(4):
        env = dict(v.split("=", 1) for v in found[(rank, "VARS")].split())
        assert env == {
            "RANK": str(rank), "LOCAL_RANK": str(rank % 2), "WORLD_SIZE": "4", "NODE_RANK": str(rank // 2),
            "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": str(rank % 2),
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "AZ_BATCH_MASTER_NODE": f"{first['MASTER_ADDR']}:{first['MASTER_PORT']}",
            "MASTER_ADDR": first["MASTER_ADDR"], "MASTER_PORT": first["MASTER_PORT"],
            "RUNYARD_NODE_ADDRESSES": first["RUNYARD_NODE_ADDRESSES"]}
        assert found[(rank, "HOSTFILE")] == "|".join(f"{a} slots=2" for a in addresses)
