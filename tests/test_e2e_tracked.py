"""Tracked child runs through a real head and agent: a script's `child_run()`s become Runyard runs with their
parent, their own metrics, params and state, ended by the script or with the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testbed.harness import Cluster, wait_until

SCRIPT = """\
import sys
from runyard import Run
run = Run.get_context()
run.log("loss", 1.0)
with run.child_run("fold-1") as fold:
    fold.log("acc", 0.8)
    fold.log_param("k", "1")
    inner = fold.child_run("inner")   # left open: it ends with fold-1
    inner.log("x", 3)
left = run.child_run("left-open")      # left open: it ends with the run
if sys.argv[1] == "fail":
    try:
        with run.child_run("raises"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    sys.exit(4)
"""


def children(cluster: Cluster, parent: str) -> dict[str, dict[str, Any]]:
    return {r["display_name"]: r for r in cluster.json("runs", "--limit", "100") if r["parent_run_id"] == parent}


@pytest.mark.timeout(120)
def test_child_runs_of_a_script_are_runs_with_their_own_records(cluster: Cluster, project: Path) -> None:
    (project / "track.py").write_text(SCRIPT)
    run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "track.py", "ok",
                         check=True).stdout.strip()
    assert cluster.wait_state(run_id, "Completed", "Failed")["state"] == "Completed"

    mine = children(cluster, run_id)
    assert sorted(mine) == ["fold-1", "left-open"]
    fold = cluster.run(mine["fold-1"]["id"])
    assert (fold["state"], fold["parent_run_id"]) == ("Completed", run_id)
    assert [e["event"] for e in fold["events"]] == ["track", "complete"]
    assert [(s["key"], s["last"]) for s in cluster.json("metrics", fold["id"])["summaries"]] == [("acc", 0.8)]
    assert cluster.json("metrics", fold["id"])["params"] == {"k": "1"}
    assert [s["key"] for s in cluster.json("metrics", run_id)["summaries"]] == ["loss"]

    inner = children(cluster, fold["id"])["inner"]
    assert inner["state"] == "Completed"
    assert [s["key"] for s in cluster.json("metrics", inner["id"])["summaries"]] == ["x"]
    left = cluster.run(mine["left-open"]["id"])
    assert left["state"] == "Completed" and left["events"][-1]["detail"] == f"its parent {run_id} ended Completed"


@pytest.mark.timeout(120)
def test_a_failing_script_fails_its_open_children_and_a_raising_block_fails_its_child(cluster: Cluster,
                                                                                      project: Path) -> None:
    (project / "track.py").write_text(SCRIPT)
    run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "track.py", "fail",
                         check=True).stdout.strip()
    assert cluster.wait_state(run_id, "Completed", "Failed")["state"] == "Failed"

    states = {name: run["state"] for name, run in children(cluster, run_id).items()}
    assert states == {"fold-1": "Completed", "left-open": "Failed", "raises": "Failed"}


@pytest.mark.timeout(120)
def test_canceling_a_tracked_run_ends_it_at_once(cluster: Cluster, project: Path, shared: Path) -> None:
    gate = shared / "gate"
    (project / "wait.py").write_text(
        "import os, time\nfrom runyard import Run\n"
        "child = Run.get_context().child_run('waiting'); child.flush()\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n")
    run_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "wait.py", check=True).stdout.strip()
    waiting = wait_until("the child run", lambda: children(cluster, run_id).get("waiting"))

    assert cluster.cli("cancel", waiting["id"], check=True).stdout.strip() == f"{waiting['id']}: canceled"
    assert cluster.run(waiting["id"])["state"] == "Canceled"
    assert cluster.run(run_id)["state"] == "Running"   # the run that tracks it goes on
    gate.touch()
    assert cluster.wait_state(run_id, "Completed", "Failed")["state"] == "Completed"
