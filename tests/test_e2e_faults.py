"""Faults with real processes: the head SIGKILLed mid-run (logs, SDK and MLflow metrics, a child run: each once),
hostile snapshot archives."""

from __future__ import annotations

import hashlib
import sqlite3
import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.client import Client
from runyard.errors import InvalidArgument
from tests.places import attempt_dirs
from testbed.harness import Cluster, wait_until


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    found = Cluster.start(tmp_path / "cluster", agents=1)
    yield found
    found.stop()


def test_head_killed_while_a_run_runs(own_cluster: Cluster, project: Path, shared: Path) -> None:
    cluster = own_cluster
    gate = shared / "gate"
    (project / "count.py").write_text(
        "import os, time\n"
        "import mlflow\n"
        "from runyard import Run\n"
        "run = Run.get_context()\n"
        "for i in range(50):\n"
        "    print(f'line {i}', flush=True)\n"
        "    run.log('seen', i, step=i)\n"
        "    mlflow.log_metric('mlflow_seen', i, step=i)\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.01)\n"
        "with run.child_run('second-half') as half:\n"
        "    for i in range(50, 100):\n"
        "        print(f'line {i}', flush=True)\n"
        "        run.log('seen', i, step=i)\n"
        "        mlflow.log_metric('mlflow_seen', i, step=i)\n"
        "        half.log('seen', i, step=i)\n"
        "        time.sleep(0.005)\n"
    )
    run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "count.py", check=True).stdout.strip()
    wait_until("the first 50 lines", lambda: "line 49" in cluster.logs_text(run_id))
    pid_before = next(e["detail"] for e in cluster.run(run_id)["events"] if e["event"] == "start")

    cluster.head.kill()
    gate.touch()  # the run goes on and writes its second half while the head is down
    cluster.head.start()  # same data dir, same port: the agent reconnects

    run = cluster.wait_state(run_id, "Completed")
    assert run["attempt"] == 1 and run["exit_code"] == 0
    starts = [e for e in run["events"] if e["event"] == "start"]
    assert [e["detail"] for e in starts] == [pid_before]  # the same process, never restarted
    assert cluster.logs_text(run_id).splitlines() == [f"line {i}" for i in range(100)]  # each line exactly once
    # metrics and the child run logged across the head's death: each point once, the child once
    for key in ("seen", "mlflow_seen"):   # the SDK's and an unchanged MLflow script's, both through the agent
        assert [int(p["step"]) for p in cluster.json("metrics", run_id, "--key", key)["points"]] == list(range(100))
    children = [r for r in cluster.json("runs") if r["parent_run_id"] == run_id]
    assert [(c["display_name"], c["state"]) for c in children] == [("second-half", "Completed")]
    assert [int(p["step"]) for p in cluster.json("metrics", children[0]["id"], "--key", "seen")["points"]] == list(
        range(50, 100))


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buffer.getvalue()


def _link(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


HOSTILE = {
    "dotdot": [("ok.py", b"print(1)"), ("../evil", b"owned")],
    "absolute": [("ok.py", b"print(1)"), ("/tmp/runyard-evil-absolute", b"owned")],
    "symlink": [("ok.py", b"print(1)"), (_link("link", "/etc/passwd"), b"/etc/passwd")],
    "too deep": [("ok.py", b"print(1)"), ("d/" * 64 + "deep.py", b"print(2)")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_snapshot_is_refused_on_upload(cluster: Cluster, tmp_path: Path, case: str) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip(HOSTILE[case]))  # type: ignore[arg-type]
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    with Client(cluster.head.client_config()) as client:
        with pytest.raises(InvalidArgument, match="rejected") as caught:
            client.upload_snapshot(archive, sha)
        bad = HOSTILE[case][-1][0]
        assert (bad.filename if isinstance(bad, zipfile.ZipInfo) else bad) in str(caught.value)
        assert not client.has_snapshot(sha)


def test_hostile_snapshot_is_refused_again_by_the_agent(cluster: Cluster, project: Path, tmp_path: Path) -> None:
    """An archive that got into the store anyway (e.g. an older head) is checked again before extraction."""
    data = _zip([("ok.py", b"print(1)"), ("../evil", b"owned"), ("/tmp/runyard-evil-abs", b"owned"),
                 (_link("link", "/etc/passwd"), b"/etc/passwd")])  # type: ignore[list-item]
    sha = hashlib.sha256(data).hexdigest()
    stored = cluster.head.data_dir / "artifacts" / "snapshots" / sha[:2] / f"{sha}.zip"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(data)
    with sqlite3.connect(cluster.head.data_dir / "runyard.db") as db:   # as an upload would have granted it
        db.execute("INSERT INTO snapshot_workspaces (sha256, workspace) VALUES (?, 'default')", (sha,))
    with Client(cluster.head.client_config()) as client:
        from protos import runyard_pb2 as pb
        run_id = client.submit(pb.SubmitRequest(experiment="evil", snapshot_sha256=sha,
                                                spec=pb.RunSpec(argv=["python", "ok.py"]))).run_id
    run = cluster.wait_state(run_id, "Failed")
    assert run["reason"] == "snapshot_invalid"
    assert "../evil" in run["events"][-1]["detail"]
    for agent in cluster.agents:
        dirs = attempt_dirs(agent.data_dir, run_id)
        assert not (dirs.top / "evil").exists() and not (dirs.top.parent / "evil").exists()
        assert not list(dirs.top.rglob("ok.py"))  # rejected as a whole: nothing extracted
    assert not Path("/tmp/runyard-evil-abs").exists()
    assert not any(p.name == "evil" for p in cluster.root.rglob("evil"))
    assert os.path.exists("/etc/passwd")
