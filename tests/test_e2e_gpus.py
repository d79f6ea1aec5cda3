"""GPU placement with fake GPUs on two agents, and admins taking a node out of scheduling."""

from __future__ import annotations

from pathlib import Path

from testbed.harness import Cluster, wait_until


def test_gpu_runs_get_disjoint_devices_and_pack_onto_one_node(tmp_path: Path, project: Path, shared: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=2, fake_gpus=2)
    try:
        gate = shared / "gate"
        (project / "gpu.py").write_text(
            "import os, time\n"
            "print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
            f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
        )

        def submit(gpus: int) -> str:
            return cluster.cli("submit", str(project), "-d", "-q", "--gpus", str(gpus), "--", "python", "gpu.py",
                               check=True).stdout.strip()

        first = submit(1)
        cluster.wait_state(first, "Running")
        second = submit(1)
        cluster.wait_state(second, "Running")
        # best fit: the second 1-GPU run goes next to the first, so the other node stays whole for a 2-GPU run
        assert cluster.run(first)["node"] == cluster.run(second)["node"]
        whole = submit(2)
        cluster.wait_state(whole, "Running")
        waiting = submit(1)
        reason = wait_until("a GPU pending reason", lambda: "GPUs" in (r := cluster.run(waiting))["pending_reason"] and r)
        assert reason["pending_reason"].startswith("waiting for 1 GPUs on one node in cluster default; largest free: 0")

        seen = {}
        for run_id in (first, second, whole):
            devices = wait_until("the run to print its devices", lambda: cluster.logs_text(run_id).strip())
            seen[run_id] = (cluster.run(run_id)["node"], devices)
        pairs = [(node, index) for node, devices in seen.values() for index in devices.split(",")]
        assert len(pairs) == 4 and len(set(pairs)) == 4  # no GPU given to two live runs
        assert sorted(seen[whole][1].split(",")) == ["0", "1"]
        nodes = {n["name"]: n for n in cluster.json("nodes")}
        assert sum(int(n["allocated"]["gpus"]) for n in nodes.values()) == 4
        assert all(len(n["capacity"]["gpus"]) == 2 for n in nodes.values())
        gate.touch()
        for run_id in (first, second, whole, waiting):
            cluster.wait_state(run_id, "Completed")
    finally:
        cluster.stop()


def test_cordon_drain_and_uncordon(tmp_path: Path, project: Path, shared: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1)
    try:
        gate = shared / "gate"
        (project / "wait.py").write_text(f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n")
        running = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "wait.py", check=True).stdout.strip()
        cluster.wait_state(running, "Running")
        assert cluster.cli("node", "drain", "node-1", check=True).stdout == "node-1: draining (1 runs on it)\n"
        held = cluster.cli("submit", str(project), "-d", "-q", "--", "true", check=True).stdout.strip()
        reason = wait_until("a pending reason", lambda: "cordoned" in (r := cluster.run(held))["pending_reason"] and r)
        assert reason["pending_reason"] == "no node in cluster default is up (1 cordoned, draining or quarantined)"
        assert reason["pending_kind"] == "no_node"
        gate.touch()
        cluster.wait_state(running, "Completed")  # a draining node lets its runs finish
        node = cluster.json("nodes")[0]
        assert (node["schedule"], node["drained"]) == ("draining", True)
        assert "drained" in cluster.cli("nodes", check=True).stdout
        assert cluster.run(held)["state"] == "Queued"
        cluster.cli("node", "uncordon", "node-1", check=True)
        cluster.wait_state(held, "Completed")
        cluster.cli("node", "cordon", "node-1", check=True)
        assert cluster.json("nodes")[0]["schedule"] == "cordoned"
        missing = cluster.cli("node", "drain", "nosuchnode")
        assert missing.returncode == 1 and "no node 'nosuchnode'" in missing.stderr
    finally:
        cluster.stop()


def test_every_process_of_a_distributed_run_sees_its_nodes_gpus(tmp_path: Path, project: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=2, fake_gpus=2)
    try:
        (project / "show.py").write_text(
            "import os\n"
            "print(os.environ['RANK'], os.environ['LOCAL_RANK'], os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n")
        run_id = cluster.cli("submit", str(project), "-d", "-q", "--gpus", "2", "--nodes", "2", "--procs-per-node",
                             "2", "--", "python", "show.py", check=True).stdout.strip()
        assert cluster.wait_state(run_id, "Completed", "Failed")["state"] == "Completed"

        lines = sorted(cluster.cli("logs", run_id, "--all-ranks", check=True).stdout.splitlines())
        # as torchrun: a node's processes share its GPUs and LOCAL_RANK picks one
        assert [line.split("] ", 1)[1].split(" ", 2)[:2] for line in lines] == [["0", "0"], ["1", "1"], ["2", "0"],
                                                                               ["3", "1"]]
        assert all(sorted(line.rsplit(" ", 1)[1].split(",")) == ["0", "1"] for line in lines)
    finally:
        cluster.stop()

