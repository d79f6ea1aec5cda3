"""Distributed PyTorch with real agents: 2 nodes x 2 processes train one model over gloo and end with identical
parameters; logs show rank 0 by default, one rank with --rank, every rank with --all-ranks."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from testbed.harness import Cluster, process_gone, wait_until

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch is not installed (pip install torch==2.13.0, the CPU build)")

TRAIN = """\
import hashlib, os, torch, torch.distributed as dist
from runyard import Run

def main():
    dist.init_process_group("gloo")
    run = Run.get_context()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(dist.get_rank())
    for step in range(8):
        x = torch.randn(8, 4, generator=g); y = x.sum(1, keepdim=True)
        loss = ((ddp(x) - y) ** 2).mean(); opt.zero_grad(); loss.backward(); opt.step()
        run.log("loss", loss.item(), step=step)
    run.log("rank", dist.get_rank())
    h = hashlib.sha256(repr([p.detach().flatten().tolist() for p in model.parameters()]).encode()).hexdigest()[:16]
    store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "-")
    print(f"DIGEST rank={dist.get_rank()} world={dist.get_world_size()} {h} store={store}", flush=True)
    dist.barrier()
    dist.destroy_process_group()

main()
Run.get_context().flush()
os._exit(0)  # past gloo's abort in interpreter finalization, as examples/ddp/train.py says
"""
DIGEST = re.compile(r"^(\[rank (\d)\] )?DIGEST rank=(\d) world=4 ([0-9a-f]{16}) store=(True|-)$")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["python train.py", "torchrun train.py"])
def test_two_nodes_of_two_processes_train_one_model(cluster: Cluster, project: Path, command: str) -> None:
    (project / "train.py").write_text(TRAIN)
    (project / "job.yml").write_text(
        f"command: {command}\n"
        "resources: {instance_count: 2, properties: {cpus: 1, memory: 1G}}\n"
        "distribution: {type: pytorch, process_count_per_instance: 2}\n"
        "limits: {timeout: 240}\n")
    run_id = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"), check=True).stdout.strip()

    shown = cluster.wait_state(run_id, "Completed", "Failed", "Canceled", timeout_s=240)

    assert shown["state"] == "Completed", (shown["events"][-1]["detail"],
                                           cluster.cli("logs", run_id, "--all-ranks").stderr[:6000])
    everyone = [DIGEST.match(line) for line in cluster.cli("logs", run_id, "--all-ranks", check=True).stdout.splitlines()
                if "DIGEST" in line]
    assert all(everyone) and sorted((m[2], m[3]) for m in everyone if m) == [(str(r), str(r)) for r in range(4)]
    assert len({m[4] for m in everyone if m}) == 1, "every rank ends with the same parameters"
    # as torchrun's agent does, rank 0's node hosts the store: its ranks, rank 0 too, are clients of it
    assert {m[3]: m[5] for m in everyone if m}["0"] == "True"
    default = cluster.cli("logs", run_id, check=True).stdout
    assert re.fullmatch(r"DIGEST rank=0 world=4 [0-9a-f]{16} store=True\n", default)
    assert cluster.cli("logs", run_id, "--rank", "3", check=True).stdout.startswith("DIGEST rank=3 world=4 ")

    # Every process logged through the SDK: its points carry its rank, and each rank's loss went down.
    series = cluster.json("metrics", run_id, "--key", "loss", "--all-ranks")["points"]
    by_rank: dict[int, list[float]] = {}
    for point in series:
        by_rank.setdefault(point.get("rank", 0), []).append(point["value"])
    assert sorted(by_rank) == [0, 1, 2, 3] and all(len(values) == 8 for values in by_rank.values())
    assert all(values[-1] < values[0] for values in by_rank.values()), by_rank
    assert {s["rank"] if "rank" in s else 0: s["last"] for s in cluster.json("metrics", run_id, "--all-ranks")["summaries"]
            if s["key"] == "rank"} == {0: 0, 1: 1, 2: 2, 3: 3}
    assert [s.get("rank", 0) for s in cluster.json("metrics", run_id)["summaries"]] == [0, 0]   # rank 0's by default
    rank2 = cluster.json("metrics", run_id, "--rank", "2", "--key", "rank")["points"]
    assert [(p["rank"], p["value"]) for p in rank2] == [(2, 2)]


@pytest.mark.timeout(300)
def test_the_ddp_example_runs_as_shipped(cluster: Cluster) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "ddp" / "job.yml"
    run_id = cluster.cli("submit", "-d", "-q", "-f", str(example), check=True).stdout.strip()

    shown = cluster.wait_state(run_id, "Completed", "Failed", "Canceled", timeout_s=240)

    assert shown["state"] == "Completed", (shown["events"][-1]["detail"],
                                           cluster.cli("logs", run_id, "--all-ranks").stderr[-6000:])
    lines = cluster.cli("logs", run_id, check=True).stdout.splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"step {s}/5" for s in range(1, 6)]
    assert all(line.endswith("world=4") for line in lines)


@pytest.mark.timeout(180)
def test_one_failing_rank_fails_the_run_and_stops_every_other_process(cluster: Cluster, project: Path,
                                                                       shared: Path) -> None:
    (project / "fail.py").write_text(
        "import os, sys, time\n"
        "rank = os.environ['RANK']\n"
        f"open(os.path.join({str(shared)!r}, 'pid.' + rank), 'w').write(str(os.getpid()))\n"
        "if rank == '3':\n"
        "    # every other rank has started (and written its pid) before this one fails\n"
        f"    while not all(os.path.exists(os.path.join({str(shared)!r}, f'pid.{{r}}')) for r in range(3)):\n"
        "        time.sleep(0.02)\n"
        "    sys.exit(7)\n"
        "time.sleep(600)\n")
    (project / "job.yml").write_text(
        "command: python fail.py\n"
        "resources: {instance_count: 2, properties: {cpus: 1, memory: 512M}}\n"
        "distribution: {type: pytorch, process_count_per_instance: 2}\n"
        "limits: {timeout: 600}\n")
    run_id = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"), check=True).stdout.strip()

    # It ends long before the others' 600 s sleep: the first failure stops them.
    shown = cluster.wait_state(run_id, "Completed", "Failed", "Canceled", timeout_s=120)
    assert shown["state"] == "Failed"
    assert shown["exit_code"] == 7
    assert shown["events"][-1]["detail"].endswith("(node rank 1) ended Failed: rank 3 exited with code 7")
    children = {r["properties"]["runyard.node_rank"]: cluster.run(r["id"]) for r in cluster.json("runs")
                if r["parent_run_id"] == run_id}
    failed = children["1"]  # ranks 2 and 3
    assert (failed["state"], failed["reason"], failed["exit_code"]) == ("Failed", "exit_code", 7)
    assert failed["events"][-1]["detail"] == "rank 3 exited with code 7"
    assert (children["0"]["state"], children["0"]["reason"]) == ("Canceled", "sibling_failed")
    pids = [int((shared / f"pid.{rank}").read_text()) for rank in range(4)]
    for pid in pids:
        wait_until(f"process {pid} to be gone", lambda pid=pid: process_gone(pid), timeout_s=30)


@pytest.mark.timeout(240)
def test_a_ddp_gang_that_loses_a_node_is_requeued_whole_with_a_new_rendezvous(tmp_path: Path, project: Path,
                                                                              shared: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=3, heartbeat_interval_s=0.2,
                            head_settings={"disconnected_after_s": 1.0, "down_after_s": 2.0})
    try:
        (project / "gang.py").write_text(
            "import os, time\n"
            "rank = os.environ['RANK']\n"
            "rendezvous = os.environ['MASTER_ADDR'] + ':' + os.environ['MASTER_PORT']\n"
            "try:  # a child run's own RUNYARD_ATTEMPT is 1 in every attempt of the gang\n"
            f"    attempt = '1'; open(os.path.join({str(shared)!r}, '1.' + rank), 'x').write(rendezvous)\n"
            "except FileExistsError:\n"
            f"    attempt = '2'; open(os.path.join({str(shared)!r}, '2.' + rank), 'x').write(rendezvous)\n"
            "if attempt == '1':\n"
            "    time.sleep(600)\n"
            "print('rank', rank, 'attempt', attempt, 'done', flush=True)\n")
        (project / "job.yml").write_text(
            "command: python gang.py\n"
            "resources: {instance_count: 2, properties: {cpus: 1, memory: 512M}}\n"
            "distribution: {type: pytorch, process_count_per_instance: 2}\n"
            "limits: {timeout: 600}\n")
        parent = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"), check=True).stdout.strip()
        wait_until("all 4 processes of attempt 1", lambda: all((shared / f"1.{r}").exists() for r in range(4)))
        children = [r for r in cluster.json("runs") if r["parent_run_id"] == parent]
        lost = next(c for c in children if c["properties"]["runyard.node_rank"] == "1")
        victim = next(a for a in cluster.agents if a.name == lost["node"])
        assert victim.proc is not None
        victim.proc.kill()
        victim.proc.wait()

        done = cluster.wait_state(parent, "Completed", "Failed", "Canceled", timeout_s=120)

        assert (done["state"], done["attempt"]) == ("Completed", 2), done["events"]
        first = {(shared / f"1.{r}").read_text() for r in range(4)}
        second = {(shared / f"2.{r}").read_text() for r in range(4)}
        assert len(first) == 1 and len(second) == 1, "one rendezvous per attempt"
        runs = [r for r in cluster.json("runs") if r["parent_run_id"] == parent]
        master = {r["properties"]["runyard.parent_attempt"]: r["node"] for r in runs
                  if r["properties"]["runyard.node_rank"] == "0"}
        assert first != second or master["1"] != master["2"], "attempt 2 has a rendezvous of its own"
        assert all(r["node"] != lost["node"] for r in runs if r["properties"]["runyard.parent_attempt"] == "2")
    finally:
        cluster.stop()
