"""The user stories of one run, through the real CLI against a real head and agents on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.harness import Cluster, process_gone, wait_until

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    dest = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, dest)
    return dest


def test_submit_streams_output_and_records_metrics_and_outputs(cluster: Cluster, quickstart: Path, tmp_path: Path) -> None:
    result = cluster.cli("submit", str(quickstart), "--", "python", "train.py", "--steps", "5", "--delay", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "training for 5 steps with lr=0.1"
    assert [line.split()[1] for line in lines[1:6]] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert lines[-1] == "done"
    run_id = result.stderr.split("run ", 1)[1].split()[0]

    run = cluster.run(run_id)
    assert run["state"] == "Completed" and run["exit_code"] == 0 and run["attempt"] == 1
    assert [e["to_state"] for e in run["events"]] == ["Queued", "Preparing", "Running", "Finalizing", "Completed"]

    metrics = cluster.json("metrics", run_id)
    summaries = {s["key"]: s for s in metrics["summaries"]}
    assert set(summaries) == {"loss", "accuracy"}
    assert int(summaries["loss"]["count"]) == 5 and int(summaries["loss"]["last_step"]) == 4
    assert metrics["params"] == {"lr": "0.1", "steps": "5"}
    csv_lines = cluster.cli("metrics", run_id, "--key", "accuracy", "-o", "csv", check=True).stdout.splitlines()
    assert csv_lines[0] == "key,step,value,ts" and len(csv_lines) == 6

    cluster.cli("download", run_id, "--outputs", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / "model.txt").read_text() == "weights after 5 steps\n"
    cluster.cli("download", run_id, "--snapshot", str(tmp_path / "snap"), check=True)
    assert (tmp_path / "snap" / "train.py").read_bytes() == (quickstart / "train.py").read_bytes()


def test_exit_code_of_the_run_is_the_exit_code_of_submit(cluster: Cluster, project: Path) -> None:
    result = cluster.cli("submit", str(project), "--", "python", "-c", "import sys; print('bye'); sys.exit(3)")
    assert result.returncode == 3
    assert result.stdout == "bye\n"
    assert "Traceback" not in result.stderr


def test_detached_submit_of_a_job_file_returns_the_id_at_once(cluster: Cluster, quickstart: Path) -> None:
    result = cluster.cli("submit", "-f", str(quickstart / "job.yml"), "--set", "inputs.steps=3", "-d", "-q")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    assert len(run_id) == 18 and "training" not in result.stdout
    run = cluster.wait_state(run_id, "Completed")
    assert run["experiment"] == "quickstart" and run["display_name"] == "quickstart-baseline"
    assert run["tags"] == {"example": "quickstart"}
    assert run["spec"]["argv"] == ["/bin/sh", "-c", "python train.py --steps 3 --lr 0.1"]
    assert run_id in {r["id"] for r in cluster.json("runs", "-e", "quickstart")}
    assert "step 3/3" in cluster.logs_text(run_id)


def test_resubmitting_an_unchanged_directory_uploads_nothing(cluster: Cluster, project: Path) -> None:
    snapshots = cluster.head.data_dir / "artifacts" / "snapshots"
    (project / "unique.txt").write_text(os.urandom(8).hex())  # content no other test has uploaded
    first = cluster.cli("submit", str(project), "-d", "--", "python", "hello.py", check=True)
    assert "uploaded" in first.stderr
    stored = sorted(snapshots.rglob("*.zip"))
    (project / "hello.py").touch()  # a new mtime is not a change
    second = cluster.cli("submit", str(project), "-d", "--", "python", "hello.py", check=True)
    assert "nothing to upload" in second.stderr and "uploaded" not in second.stderr
    assert sorted(snapshots.rglob("*.zip")) == stored
    (project / "hello.py").write_text("print('changed')\n")
    third = cluster.cli("submit", str(project), "-d", "--", "python", "hello.py", check=True)
    assert "uploaded" in third.stderr
    assert len(list(snapshots.rglob("*.zip"))) == len(stored) + 1


def test_run_environment(cluster: Cluster, project: Path) -> None:
    (project / "env.py").write_text(
        "import os\n"
        "for key in ('RUNYARD_RUN_ID', 'RUNYARD_EXPERIMENT', 'RUNYARD_WORKSPACE', 'RUNYARD_ATTEMPT', 'MY_VAR',"
        " 'CUDA_VISIBLE_DEVICES'):\n"
        "    print(f'{key}={os.environ.get(key)}')\n"
        "print('outputs_is_here=' + str(os.environ['RUNYARD_OUTPUTS_DIR'] == os.path.abspath('outputs')))\n"
        "print('leaked=' + ','.join(k for k in os.environ if 'TOKEN' in k and k != 'MLFLOW_TRACKING_TOKEN'))\n"
        "print('mlflow=' + str(os.environ['MLFLOW_RUN_ID'] == os.environ['RUNYARD_RUN_ID']"
        " and len(os.environ['MLFLOW_TRACKING_TOKEN']) >= 32))\n"
    )
    result = cluster.cli("submit", str(project), "-e", "envtest", "--env", "MY_VAR=42", "--", "python", "env.py")
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    run_id = seen["RUNYARD_RUN_ID"]
    assert cluster.run(run_id)["experiment"] == "envtest"
    assert seen["RUNYARD_EXPERIMENT"] == "envtest" and seen["RUNYARD_WORKSPACE"] == "default"
    assert seen["RUNYARD_ATTEMPT"] == "1" and seen["MY_VAR"] == "42" and seen["CUDA_VISIBLE_DEVICES"] == ""
    assert seen["outputs_is_here"] == "True"
    assert seen["leaked"] == ""  # neither the join token nor the node credential reaches a run
    assert seen["mlflow"] == "True"  # only its own token at its agent's MLflow endpoint


def test_cancel_stops_the_whole_process_group(cluster: Cluster, project: Path, shared: Path) -> None:
    pids = shared / "pids"
    (project / "sleeper.py").write_text(
        "import os, subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('sleeping', flush=True)\n"
        "child.wait()\n"
    )
    run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "sleeper.py", check=True).stdout.strip()
    wait_until("the run to start its child", pids.exists)
    parent, child = (int(p) for p in pids.read_text().split())
    result = cluster.cli("cancel", run_id, check=True)
    assert "stopping" in result.stdout or "canceled" in result.stdout
    run = cluster.wait_state(run_id, "Canceled")
    assert run["reason"] == "canceled_by_user"

    wait_until("both processes to be gone", lambda: process_gone(parent) and process_gone(child), timeout_s=10)
    assert cluster.cli("logs", run_id, check=True).stdout.startswith("sleeping")


def test_cancel_of_a_queued_run_and_of_a_finished_one(cluster: Cluster, project: Path) -> None:
    run_id = cluster.cli("submit", str(project), "-d", "-q", "-c", "gpu-pool", "--", "python", "hello.py",
                         check=True).stdout.strip()
    reason = wait_until("a pending reason", lambda: "is up" in (r := cluster.run(run_id))["pending_reason"] and r)
    assert reason["state"] == "Queued" and reason["pending_reason"] == "no node in cluster gpu-pool is up"
    queue = cluster.cli("queue", check=True).stdout
    assert run_id in queue and "gpu-pool is up" in queue
    assert "gpu-pool is up" in cluster.cli("show", run_id, check=True).stdout
    assert cluster.cli("cancel", run_id, check=True).stdout == f"{run_id}: canceled\n"
    assert cluster.run(run_id)["state"] == "Canceled"
    done = cluster.cli("submit", str(project), "-q", "--", "python", "hello.py", check=True).stdout.split()[0]
    assert cluster.cli("cancel", done, check=True).stdout == f"{done}: already Completed\n"
    assert cluster.run(done)["state"] == "Completed"


def test_logs_follow_shows_lines_while_the_run_is_running(cluster: Cluster, project: Path, shared: Path) -> None:
    gate = shared / "gate"
    (project / "gated.py").write_text(
        "import os, time\n"
        "print('first line', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.01)\n"
        "print('second line')\n"
    )
    run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "gated.py", check=True).stdout.strip()
    follower = cluster.popen_cli("logs", "-f", run_id)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "first line\n"  # arrives while the run is still blocked on the gate
        assert cluster.run(run_id)["state"] == "Running"
        gate.touch()
        rest, _ = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert rest == "second line\n" and follower.returncode == 0
    tail = cluster.cli("logs", run_id, "--tail", "1", check=True).stdout
    assert tail == "second line\n"


def test_output_is_stored_exactly(cluster: Cluster, project: Path) -> None:
    (project / "noisy.py").write_text(
        "import sys\n"
        "sys.stdout.buffer.write(b'\\x1b[31mred\\x1b[0m \\xff\\xfe not utf-8\\n')\n"
        "sys.stdout.buffer.write(b'x' * 200000 + b'\\n')\n"
        "sys.stderr.write('to stderr\\n')\n"
    )
    run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "noisy.py", check=True).stdout.strip()
    cluster.wait_state(run_id, "Completed")
    out = subprocess.run([sys.executable, "-m", "runyard", "logs", run_id], env=cluster.env(), capture_output=True,
                         timeout=60)
    assert out.stdout == b"\x1b[31mred\x1b[0m \xff\xfe not utf-8\n" + b"x" * 200000 + b"\n"
    assert out.stderr == b"to stderr\n"


def test_wrong_token_is_refused_everywhere_with_one_line(cluster: Cluster, project: Path) -> None:
    env = cluster.env(RUNYARD_TOKEN="wrong")
    commands = [["runs"], ["nodes"], ["queue"], ["show", "x"], ["logs", "x"], ["metrics", "x"], ["cancel", "x"],
                ["download", "x"], ["submit", str(project), "--", "true"]]
    for args in commands:
        result = cluster.cli(*args, env=env)
        assert result.returncode == 1, args
        assert result.stderr.count("\n") == 1 and "authentication failed" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert "refused call" in (cluster.root / "head.log").read_text()
    assert not any(r["display_name"] == "true" for r in cluster.json("runs"))


def test_user_mistakes_get_one_line_and_no_traceback(cluster: Cluster, project: Path, tmp_path: Path) -> None:
    bad_job = tmp_path / "job.yml"
    bad_job.write_text("command: python x.py\nresources: {properties: {gpus: -1}}\n")
    cases = [
        (["submit", "-f", str(bad_job)], "resources.properties.gpus"),
        (["submit", str(tmp_path / "missing"), "--", "true"], "missing"),
        (["submit", str(project)], "no command"),
        (["show", "nosuchrun"], "no run"),
        (["submit", str(project), "--memory", "lots", "--", "true"], "--memory"),
    ]
    for args, expected in cases:
        result = cluster.cli(*args)
        assert result.returncode != 0, args
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_snapshot_over_the_limit_is_refused(cluster: Cluster, project: Path) -> None:
    (project / "big.bin").write_bytes(os.urandom(300_000))
    result = cluster.cli("submit", str(project), "--", "true", env=cluster.env(RUNYARD_SNAPSHOT_MAX_BYTES="100000"))
    assert result.returncode == 2
    assert "over the snapshot limit" in result.stderr and "big.bin" in result.stderr


def test_git_information_becomes_run_properties(cluster: Cluster, project: Path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=project, check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://example.invalid/team/repo.git"], cwd=project, check=True)
    subprocess.run([*git, "add", "."], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=project, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "hello.py", check=True).stdout.strip()
    properties = cluster.run(run_id)["properties"]
    assert properties["git.commit"] == commit and properties["git.branch"] == "main"
    assert properties["git.repository_url"] == "https://example.invalid/team/repo.git"
    assert properties["git.dirty"] == "false"


def test_nodes_lists_both_agents(cluster: Cluster) -> None:
    nodes = {n["name"]: n for n in cluster.json("nodes")}
    assert {"node-1", "node-2"} <= set(nodes)
    assert all(n["state"] == "Ready" and float(n["capacity"]["cpus"]) >= 1 for n in nodes.values())
    table = cluster.cli("nodes", check=True).stdout
    assert "node-1" in table and "Ready" in table


def test_interrupting_submit_detaches_and_the_run_goes_on(cluster: Cluster, project: Path, shared: Path) -> None:
    gate = shared / "gate"
    (project / "wait.py").write_text(
        f"import os, time\nprint('started', flush=True)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
    )
    proc = cluster.popen_cli("submit", str(project), "--", "python", "wait.py")
    assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "detached" in err and "Traceback" not in err
    run_id = err.split("run ", 1)[1].split()[0]
    assert cluster.run(run_id)["state"] == "Running"
    gate.touch()
    cluster.wait_state(run_id, "Completed")


def test_a_run_past_its_time_limit_is_stopped(cluster: Cluster, project: Path) -> None:
    result = cluster.cli("submit", str(project), "--timeout", "1", "--", "sleep", "600")
    assert result.returncode != 0 and "timeout" in result.stderr
    run_id = result.stderr.split("run ", 1)[1].split()[0]
    run = cluster.run(run_id)
    assert run["state"] == "Failed" and run["reason"] == "timeout"
    assert "stopping the run: timeout" in cluster.cli("logs", run_id, check=True).stderr


def test_a_run_no_node_could_ever_hold_is_refused_at_submit(cluster: Cluster, project: Path) -> None:
    result = cluster.cli("submit", str(project), "--cpus", "1000", "--gpus", "2", "--", "true")
    error = result.stderr.splitlines()[-1]
    assert result.returncode == 1 and error.startswith("runyard: no node in cluster default can hold")
    assert "1000 CPUs, 1.0G, 2 GPUs" in error and "largest: node-" in error and "Traceback" not in result.stderr
    assert not [r for r in cluster.json("runs", "--state", "Queued") if r["display_name"] == "true"]
