"""Distributed PyTorch with real agents: 2 nodes x 2 processes train one model over gloo and end with identical
parameters; logs show rank 0 by default, one rank with --rank, every rank with --all-ranks."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from testbed.harness import Cluster

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch is not installed (pip install torch==2.13.0, the CPU build)")

TRAIN = """\
import hashlib, torch, torch.distributed as dist
dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
g = torch.Generator().manual_seed(dist.get_rank())
for _ in range(5):
    x = torch.randn(8, 4, generator=g); y = x.sum(1, keepdim=True)
    loss = ((ddp(x) - y) ** 2).mean(); opt.zero_grad(); loss.backward(); opt.step()
h = hashlib.sha256(repr([p.detach().flatten().tolist() for p in model.parameters()]).encode()).hexdigest()[:16]
print(f"DIGEST rank={dist.get_rank()} world={dist.get_world_size()} {h}", flush=True)
dist.destroy_process_group()
"""
DIGEST = re.compile(r"^(\[rank (\d)\] )?DIGEST rank=(\d) world=4 ([0-9a-f]{16})$")


@pytest.mark.timeout(300)
def test_two_nodes_of_two_processes_train_one_model(cluster: Cluster, project: Path) -> None:
    (project / "train.py").write_text(TRAIN)
    (project / "job.yml").write_text(
        "command: python train.py\n"
        "resources: {instance_count: 2, properties: {cpus: 1, memory: 1G}}\n"
        "distribution: {type: pytorch, process_count_per_instance: 2}\n"
        "limits: {timeout: 240}\n")
    run_id = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"), check=True).stdout.strip()

    shown = cluster.wait_state(run_id, "Completed", "Failed", "Canceled", timeout_s=240)

    assert shown["state"] == "Completed", (shown["reason"], cluster.cli("logs", run_id, "--all-ranks").stderr[-3000:])
    everyone = [DIGEST.match(line) for line in cluster.cli("logs", run_id, "--all-ranks", check=True).stdout.splitlines()
                if "DIGEST" in line]
    assert all(everyone) and sorted((m[2], m[3]) for m in everyone if m) == [(str(r), str(r)) for r in range(4)]
    assert len({m[4] for m in everyone if m}) == 1, "every rank ends with the same parameters"
    default = cluster.cli("logs", run_id, check=True).stdout
    assert re.fullmatch(r"DIGEST rank=0 world=4 [0-9a-f]{16}\n", default)
    assert cluster.cli("logs", run_id, "--rank", "3", check=True).stdout.startswith("DIGEST rank=3 world=4 ")
