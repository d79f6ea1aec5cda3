"""S12: a 2-node x 2-process PyTorch run on an idle cluster: submit -> all 4 processes started.

A real head and two agents (testbed.harness, loopback). The job file asks for `instance_count: 2` and
`distribution: {type: pytorch, process_count_per_instance: 2}`; its script prints nothing else before it writes
`time.time()` to a file of its rank (first thing, before torch is imported), then trains a few gloo DDP steps.
Per run: the latest of the 4 timestamps - the wall clock just before `runyard submit -d` was started (the CLI's own
start-up is included: it is what a user waits for). p50 over the runs, each after the previous one completed.

Peer measured in the same run: the same script started by hand with two
`torchrun --nnodes 2 --nproc-per-node 2 --node-rank R --master-addr 127.0.0.1 --master-port P train.py` commands
(started together; the same latest-timestamp - the time just before they were started). Ratio = ours / torchrun.
A run (or a pair of torchrun commands) whose gloo rendezvous fails or hangs on a loaded machine is listed in the
result and retried, not counted. Prints one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import emit, log, machine_info, ratio, row, summarize  # noqa: E402

GOAL_RATIO = 1.5  # p50 at most 1.5x the same launch by hand with torchrun, measured in the same run
TRAIN = """\
import os, time
open(os.path.join(os.environ["S12_MARKS"], os.environ["RANK"]), "w").write(repr(time.time()))
import torch, torch.distributed as dist
dist.init_process_group("gloo")
torch.manual_seed(0)
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
for _ in range(3):
    x = torch.randn(16, 8); loss = ((ddp(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
dist.barrier()
dist.destroy_process_group()
os._exit(0)  # past gloo's abort in interpreter finalization, as examples/ddp/train.py says
"""


def fresh_marks(root: Path) -> Path:
    marks = Path(tempfile.mkdtemp(prefix="s12-", dir=root))
    marks.chmod(0o1777)  # runs write as uids of their own
    return marks


def latest_start(marks: Path, sent: float) -> float:
    stamps = [float((marks / str(rank)).read_text()) for rank in range(4)]
    return max(stamps) - sent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ours(cluster: object, project: Path, shared: Path, runs: int, failures: list[str]) -> list[float]:
    samples: list[float] = []
    i = 0
    while len(samples) < runs:
        i += 1
        marks = fresh_marks(shared)
        (project / "job.yml").write_text(
            "command: python train.py\n"
            f"environment_variables: {{S12_MARKS: {str(marks)!r}, OMP_NUM_THREADS: '1'}}\n"
            "resources: {instance_count: 2, properties: {cpus: 1, memory: 1G}}\n"
            "distribution: {type: pytorch, process_count_per_instance: 2}\n"
            "limits: {timeout: 300}\n")
        sent = time.time()
        run_id = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"),  # type: ignore[attr-defined]
                             check=True).stdout.strip()
        shown = cluster.wait_state(run_id, "Completed", "Failed", "Canceled", timeout_s=300)  # type: ignore[attr-defined]
        if shown["state"] != "Completed":
            logs = cluster.cli("logs", run_id, "--all-ranks").stderr[-500:]  # type: ignore[attr-defined]
            failures.append(f"run {run_id} ended {shown['state']}: {shown.get('reason')}\n{logs}")
            log(f"runyard {i}/{runs} failed: {failures[-1]}")
            if len(failures) > max(5, runs):
                raise RuntimeError(failures[-1])
            continue
        samples.append(latest_start(marks, sent))
        log(f"runyard {i}/{runs}: {samples[-1]:.3f} s")
    return samples


def by_hand(project: Path, shared: Path, runs: int, failures: list[str]) -> list[float]:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        torchrun = shutil.which("torchrun") or torchrun
    samples: list[float] = []
    i = 0
    while len(samples) < runs:
        i += 1
        marks = fresh_marks(shared)
        env = {**os.environ, "S12_MARKS": str(marks), "OMP_NUM_THREADS": "1"}
        port = free_port()
        sent = time.time()
        procs = [subprocess.Popen([torchrun, "--nnodes", "2", "--nproc-per-node", "2", "--node-rank", str(rank),
                                   "--master-addr", "127.0.0.1", "--master-port", str(port), "train.py"],
                                  cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for rank in range(2)]
        try:
            for proc in procs:
                _, err = proc.communicate(timeout=60)
                if proc.returncode != 0:
                    raise RuntimeError(f"torchrun exited {proc.returncode}: {err.decode()[-2000:]}")
        except (subprocess.TimeoutExpired, RuntimeError) as err:  # a rendezvous that hangs or fails: counted, retried
            for proc in procs:
                proc.kill()
                proc.wait()
            failures.append(str(err)[:500])
            log(f"torchrun {i}/{runs} failed: {err}")
            if len(failures) > max(5, runs):
                raise
            continue
        samples.append(latest_start(marks, sent))
        log(f"torchrun {i}/{runs}: {samples[-1]:.3f} s")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 runs each")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    from testbed.harness import Cluster

    root = Path(tempfile.mkdtemp(prefix="runyard-s12-"))
    shared = Path(tempfile.mkdtemp(prefix="runyard-s12-shared-"))
    shared.chmod(0o1777)
    project = root / "project"
    project.mkdir()
    (project / "train.py").write_text(TRAIN)
    failed: list[str] = []
    peer_failed: list[str] = []
    cluster = Cluster.start(root / "cluster", agents=2)
    try:
        ours(cluster, project, shared, 1, [])  # warm-up: the agents' first run
        mine = ours(cluster, project, shared, runs, failed)
    finally:
        cluster.stop()
    by_hand(project, shared, 1, [])  # warm-up
    peer = by_hand(project, shared, runs, peer_failed)
    shutil.rmtree(shared, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    p50, peer_p50 = statistics.median(mine), statistics.median(peer)
    emit({
        "scenario": "S12",
        "what": "2 nodes x 2 processes (pytorch), submit -> all 4 processes started",
        "runyard_s": summarize(mine), "torchrun_by_hand_s": summarize(peer),
        "runyard_failed_runs": failed, "torchrun_failed_runs": peer_failed,  # retried, not in the samples
        "p50_s": round(p50, 3), "torchrun_p50_s": round(peer_p50, 3), "ratio_to_torchrun": ratio(p50, peer_p50),
        "machine": machine_info(),
        "table": [row("2 nodes x 2 processes, submit -> all 4 started, p50", p50, "s", GOAL_RATIO * peer_p50, "<=",
                      peer="two torchrun commands by hand", peer_ratio=ratio(p50, peer_p50), digits=2)],
    })


if __name__ == "__main__":
    main()
