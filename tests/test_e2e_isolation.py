"""Each run is isolated on its node: a real head and a root agent, runs as uids of their own, probing what they
must not reach (the agent's credential and caches, the join token, another live run's files, the agent's
environment) and trying to smuggle the node credential out through their outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.places import attempt_dirs, run_root
from testbed.harness import Cluster, start_agent_process, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs switch users only under a root agent")

LOW, HIGH = 200000, 265535
MARKER = "ISOLATION_TEST_MARKER"

VICTIM = """\
import os, subprocess, sys, time
from runyard import Run
print(subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip(), flush=True)
Run.get_context().log("loss", 0.5, step=1)
with open(os.path.join(os.environ["HOME"], "notes.txt"), "w") as f:
    f.write("private notes")
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
"""

PROBE = """\
import json, os, subprocess, sys
node_json, targets = sys.argv[1], sys.argv[2:]

def attempt(path):
    try:
        try:
            os.listdir(path)
            return "listed"
        except NotADirectoryError:
            with open(path, "rb") as f:
                f.read(1)
            return "read"
    except OSError as err:
        return type(err).__name__

results = {path: attempt(path) for path in targets}
for where in (os.environ["HOME"], os.environ["TMPDIR"]):
    with open(os.path.join(where, "mine"), "w") as f:
        f.write("a run writes its own HOME and TMPDIR")
os.symlink(node_json, "outputs/key.json")
os.symlink(os.path.dirname(node_json), "outputs/agent")
try:
    os.link(node_json, "outputs/hard.json")
    hard_link = "made"
except OSError as err:
    hard_link = type(err).__name__
with open("outputs/ok.txt", "w") as f:
    f.write("fine")
print(json.dumps({
    "uid": int(subprocess.run(["id", "-u"], capture_output=True, text=True).stdout),
    "results": results, "hard_link": hard_link, "marker": os.environ.get(%r),
    "own_code": open("probe.py").read(11), "env": sorted(os.environ),
    "caps": {line.split(":")[0]: int(line.split()[1], 16) for line in open("/proc/self/status")
             if line.startswith(("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"))},
    "no_new_privs": next(line.split()[1] for line in open("/proc/self/status") if line.startswith("NoNewPrivs")),
}))
""" % MARKER


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A cluster directory every user may pass through, so that only the agent's own modes keep runs out (below
    pytest's 0700 tmp_path, everything would be out of their reach anyway)."""
    path = Path(tempfile.mkdtemp(prefix="runyard-iso-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(120)
def test_a_run_reaches_nothing_of_the_agent_nor_of_another_run(open_root: Path, project: Path, shared: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MARKER, "the agent's environment")   # the agent process inherits it
    cluster = Cluster.start(open_root / "cluster", agents=1)
    try:
        agent = cluster.agents[0]
        gate = shared / "gate"
        (project / "victim.py").write_text(VICTIM)
        (project / "probe.py").write_text(PROBE)
        (project / "secret.txt").write_text("the victim's code")
        victim = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "victim.py", str(gate),
                             check=True).stdout.strip()
        cluster.wait_state(victim, "Running")
        mine = attempt_dirs(agent.data_dir, victim)
        wait_until("the victim's metrics to be written", lambda: mine.records.stat().st_size > 0)
        wait_until("the victim's notes", (mine.home / "notes.txt").exists)
        node_json = agent.data_dir / "node.key"
        cached = list((agent.data_dir / "snapshots").glob("*.zip"))
        targets = [node_json, agent.data_dir / "join.token", *cached, agent.data_dir,
                   run_root(agent.data_dir).attempts, mine.code, mine.code / "secret.txt", mine.records,
                   mine.home / "notes.txt", mine.tmp]
        assert run_root(agent.data_dir).path == agent.data_dir / "runs", "below an open directory, in the data dir"
        assert all(path.exists() for path in targets) and len(cached) == 1

        probe = cluster.cli("submit", str(project), "-q", "--", "python", "probe.py", str(node_json),
                            *map(str, targets), check=True).stdout.strip()
        seen = json.loads(probe.splitlines()[-1])
        victim_uid = int(cluster.logs_text(victim).splitlines()[0])
        assert LOW <= seen["uid"] <= HIGH and LOW <= victim_uid <= HIGH and seen["uid"] != victim_uid
        assert seen["results"] == {str(path): "PermissionError" for path in targets}
        assert seen["hard_link"] == "PermissionError", "the kernel's protected_hardlinks"
        assert seen["marker"] is None and MARKER not in seen["env"]
        assert seen["own_code"] == "import json"
        assert seen["caps"] == dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0), seen["caps"]
        assert seen["no_new_privs"] == "1"

        probe_id = cluster.json("runs", "--limit", "1")[0]["id"]
        cluster.cli("download", probe_id, "--outputs", str(shared / "out"), check=True)
        assert sorted(p.name for p in (shared / "out").iterdir()) == ["ok.txt"], "no link is followed into outputs"
        assert not attempt_dirs(agent.data_dir, probe_id).top.exists(), "an ended run's directory is removed"
        gate.touch()
        assert cluster.wait_state(victim, "Completed")["exit_code"] == 0
    finally:
        cluster.stop()


@pytest.mark.timeout(90)
def test_a_root_agent_without_a_uid_range_refuses_to_run_anything(tmp_path: Path, project: Path) -> None:
    cluster = Cluster.start(tmp_path / "cluster", agents=1, run_uid_range="")
    try:
        (tmp_path / "job.yml").write_text("retry:\n  max_retries: 0\n")   # fail at once, not requeued
        run_id = cluster.cli("submit", str(project), "-f", str(tmp_path / "job.yml"), "-d", "-q", "--", "id", "-u",
                             check=True).stdout.strip()
        run = cluster.wait_state(run_id, "Failed")
        assert run["reason"] == "agent_error"
        detail = run["events"][-1]["detail"]
        assert "the agent runs as root and run_uid_range is empty" in detail
        assert "set run_uid_range" in detail and "allow_root_runs = true" in detail
        assert not [e for e in run["events"] if e["event"] == "start"], "nothing ran"
    finally:
        cluster.stop()


@pytest.mark.timeout(60)
def test_an_unsafe_run_root_ends_the_agent_with_one_line(open_root: Path, tmp_path: Path) -> None:
    (open_root / "elsewhere").mkdir()
    (open_root / "runs").symlink_to(open_root / "elsewhere")   # planted where the agent would keep runs' files
    agent = start_agent_process("node-1", tmp_path / "agent", tmp_path / "agent.log", {
        "head_address": "127.0.0.1:9", "join_token": "unused", "run_root": str(open_root / "runs")},
        stderr=subprocess.PIPE)
    _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 2
    assert stderr.decode().splitlines()[-1] == (
        f"runyard-agent: will not use {open_root / 'runs'}: it is a symbolic link; remove it, or configure another "
        "place")
    assert list((open_root / "elsewhere").iterdir()) == []
