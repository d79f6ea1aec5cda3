"""Queries for people, through the real CLI against a real head and agents: `runs` filters and its tree,
`experiments`, `metrics` of several runs side by side, `logs --grep` over several runs, and run ids by prefix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protos import runyard_pb2 as pb
from testbed.harness import Cluster

pytestmark = pytest.mark.timeout(300)

TERMINAL = ("Completed", "Failed", "Canceled")
PRINTS = ("import sys\n"
          "from runyard import Run\n"
          "run = Run.get_context()\n"
          "for step, loss in enumerate(map(float, sys.argv[2:])):\n"
          "    run.log('loss', loss, step=step)\n"
          "for line in sys.argv[1].split('|'):\n"
          "    print(line)\n"
          "sys.stdout.flush()\n"
          "sys.stdout.buffer.write(b'\\xff not utf-8 Grep-Me\\n')\n")


@dataclass
class World:
    cluster: Cluster
    a: str          # experiment queries-vision, tags team=vision lr=0.1, submitted by the admin token, metrics
    c1: str         # children of a; c1 logs metrics too
    c2: str
    g: str          # child of c1
    b: str          # submitted by bob, experiment queries-nlp, for the cluster gpu-pool: stays queued
    me: str         # the admin token's user name
    bob_env: dict[str, str]
    other_env: dict[str, str]


def _submit_child(cluster: Cluster, parent: str, sha: str, *argv: str) -> str:
    request = pb.SubmitRequest(experiment="queries-vision", snapshot_sha256=sha, parent_run_id=parent,
                               spec=pb.RunSpec(argv=["python", "prints.py", *argv]))
    return cluster.client().submit(request).run_id


@pytest.fixture(scope="module")
def world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    project = tmp_path_factory.mktemp("queries") / "project"
    project.mkdir()
    (project / "prints.py").write_text(PRINTS)
    command = "python prints.py 'epoch 1 loss 0.5|ERROR: disk nearly full|warning: error rate fine' 1.0 0.5 0.25"
    (project / "job.yml").write_text(
        "type: command\ncode: .\nexperiment_name: queries-vision\ntags: {team: vision, lr: '0.1'}\n"
        f"command: {json.dumps(command)}\n")
    (project / "nlp.yml").write_text(
        "type: command\ncode: .\nexperiment_name: queries-nlp\ntags: {team: nlp, lr: '0.2'}\ncompute: gpu-pool\n"
        "command: python prints.py never\n")
    a = cluster.cli("submit", "-d", "-q", "-f", str(project / "job.yml"), check=True).stdout.strip()
    sha = cluster.run(a)["snapshot_sha256"]
    admin = cluster.client()
    bob = admin.create_token(pb.CreateTokenRequest(workspace="default", role=pb.ROLE_USER, name="bob")).secret
    if "other" not in {w.name for w in admin.list_workspaces()}:
        admin.create_workspace("other")
    other = admin.create_token(pb.CreateTokenRequest(workspace="other", role=pb.ROLE_USER, name="eve")).secret
    # a prefix of the parent's id names it, as everywhere else
    c1 = _submit_child(cluster, a[:12], sha, "fold 1 had an Error", "2.0", "1.0")
    c2 = _submit_child(cluster, a, sha, "fold 2 fine")
    g = _submit_child(cluster, c1, sha, "nested")
    b = cluster.cli("submit", "-d", "-q", "-f", str(project / "nlp.yml"), env=cluster.env(RUNYARD_TOKEN=bob),
                    check=True).stdout.strip()
    for run_id in (a, c1, c2, g):
        assert cluster.wait_state(run_id, *TERMINAL)["state"] == "Completed", cluster.cli("logs", run_id).stderr
    yield World(cluster, a, c1, c2, g, b, cluster.run(a)["submitter"], cluster.env(RUNYARD_TOKEN=bob),
                cluster.env(RUNYARD_TOKEN=other))
    cluster.cli("cancel", b)


def ids(w: World, *args: str, env: dict[str, str] | None = None) -> list[str]:
    result = w.cluster.cli("runs", *args, "-o", "json", env=env)
    assert result.returncode == 0, result.stderr
    return [r["id"] for r in json.loads(result.stdout)]


def refused(w: World, *args: str, env: dict[str, str] | None = None, code: int = 1) -> str:
    """The one line a refused command prints; it exits `code` without a traceback."""
    result = w.cluster.cli(*args, env=env)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


# --- runs filters ---------------------------------------------------------------------------------------------

def test_runs_filter_by_user_experiment_tag_parent_cluster_and_node(world: World) -> None:
    w = world
    mine = {w.a, w.c1, w.c2, w.g}
    assert set(ids(w, "--user", "bob")) == {w.b}
    assert mine <= set(ids(w, "--user", w.me)) and w.b not in ids(w, "--user", w.me)
    assert set(ids(w, "-e", "queries-vision")) == mine
    assert ids(w, "--tag", "team=vision") == [w.a]          # the children were submitted without tags
    assert set(ids(w, "--tag", "team=nlp")) == {w.b}
    assert set(ids(w, "--tag", "lr")) == {w.a, w.b}
    assert ids(w, "--tag", "team=vision", "--tag", "lr=0.2") == []
    assert set(ids(w, "--parent", w.a)) == {w.c1, w.c2}
    assert ids(w, "--parent", w.c1[:12]) == [w.g]
    assert ids(w, "--cluster", "gpu-pool") == [w.b]
    node = w.cluster.run(w.a)["node"]
    on_node = ids(w, "--node", node)
    assert w.a in on_node and w.b not in on_node
    assert ids(w, "--user", "bob", "-e", "queries-vision") == []
    assert len(ids(w, "-e", "queries-vision", "--limit", "2")) == 2


def test_runs_filter_by_state_in_any_case_repeated_or_comma_separated(world: World) -> None:
    w = world
    for spelling in ("queued", "QUEUED", "Queued"):
        assert ids(w, "--user", "bob", "--state", spelling) == [w.b]
    assert ids(w, "--user", "bob", "--state", "completed") == []
    both = {w.a, w.c1, w.c2, w.g, w.b}
    assert set(ids(w, "--tag", "lr", "--state", "completed,queued")) == {w.a, w.b}
    assert both <= set(ids(w, "--state", "Completed", "--state", "running", "--state", "QUEUED"))
    line = refused(w, "runs", "--state", "sleeping", code=2)
    assert line.startswith("runyard: --state: unknown run state 'sleeping'; one of Queued, ")


def test_runs_filter_by_creation_time_as_a_duration_ago_or_an_iso_date(world: World) -> None:
    w = world
    assert w.a in ids(w, "--since", "1h") and w.a in ids(w, "--since", "2000-01-01")
    assert w.a not in ids(w, "--until", "1h") and w.a not in ids(w, "--until", "2000-01-01T00:00")
    assert w.a in ids(w, "--since", "3d", "--until", "2999-12-31")
    line = refused(w, "runs", "--since", "yesterday", code=2)
    assert line == ("runyard: --since 'yesterday': give a duration ago (30m, 2h, 3d) or an ISO date or time "
                    "(2026-11-30, 2026-11-30T14:00)")


def test_runs_show_children_under_their_parent_and_the_submitter(world: World) -> None:
    w = world
    table = w.cluster.cli("runs", "-e", "queries-vision", check=True).stdout.splitlines()
    assert "SUBMITTER" in table[0]
    rows = [line for line in table[1:] if line.strip()]
    # the parent, then its children oldest first; the first child's own child one level deeper, under a bar that
    # says a sibling follows
    assert [row.split(" ", 1)[0] if row.startswith("0") else row[:len("│  └─ ") + len(w.a)].rstrip()
            for row in rows] == [w.a, f"├─ {w.c1}", f"│  └─ {w.g}", f"└─ {w.c2}"], "\n".join(table)
    assert all(w.me in row for row in rows)
    # a child whose parent is not on the page is shown as any run
    alone = w.cluster.cli("runs", "--parent", w.c1, check=True).stdout.splitlines()
    assert alone[1].startswith(w.g)
    flat = json.loads(w.cluster.cli("runs", "-e", "queries-vision", "-o", "json", check=True).stdout)
    parents = {r["id"]: r["parent_run_id"] for r in flat}
    assert parents == {w.a: "", w.c1: w.a, w.c2: w.a, w.g: w.c1}
    assert {r["submitter"] for r in flat} == {w.me}


# --- experiments ----------------------------------------------------------------------------------------------

def test_experiments_list_runs_per_state_and_the_last_activity(world: World) -> None:
    w = world
    found = {e["name"]: e for e in w.cluster.json("experiments")}
    vision, nlp = found["queries-vision"], found["queries-nlp"]
    assert (int(vision["completed"]), int(vision["total"])) == (4, 4)
    assert (int(nlp["queued"]), int(nlp["total"])) == (1, 1)
    assert vision["last_activity"] >= w.cluster.run(w.g)["ended_at"]
    table = w.cluster.cli("experiments", check=True).stdout.splitlines()
    assert table[0].split() == ["EXPERIMENT", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELED", "TOTAL",
                                "LAST", "ACTIVITY"]
    row = next(line.split() for line in table if line.startswith("queries-vision "))
    assert row[1:7] == ["0", "0", "4", "0", "0", "4"]
    other = json.loads(w.cluster.cli("experiments", "-o", "json", env=w.other_env, check=True).stdout)
    assert "queries-vision" not in {e["name"] for e in other}


# --- metrics of several runs ----------------------------------------------------------------------------------

def test_metrics_of_several_runs_side_by_side(world: World) -> None:
    w = world
    rows = json.loads(w.cluster.cli("metrics", w.a[:12], w.c1, "--key", "loss", "-o", "json", check=True).stdout)
    assert [(r["run_id"], r["last"], r["min"], r["max"], int(r["steps"]), int(r["last_step"])) for r in rows] == [
        (w.a, 0.25, 0.25, 1.0, 3, 2), (w.c1, 1.0, 1.0, 2.0, 2, 1)]
    csv_lines = w.cluster.cli("metrics", w.a, w.c1, "--key", "loss", "-o", "csv", check=True).stdout.splitlines()
    assert csv_lines == ["run,key,last,min,max,steps,last_step", f"{w.a},loss,0.25,0.25,1.0,3,2",
                         f"{w.c1},loss,1.0,1.0,2.0,2,1"]
    table = w.cluster.cli("metrics", w.a, w.c1, w.c2, "--key", "loss", check=True)
    assert table.stdout.splitlines()[0].split() == ["RUN", "KEY", "LAST", "MIN", "MAX", "STEPS", "LAST", "STEP"]
    assert table.stdout.splitlines()[1].split() == [w.a, "loss", "0.25", "0.25", "1", "3", "2"]
    assert table.stderr.strip() == f"no metric 'loss' in run {w.c2}"
    empty = w.cluster.cli("metrics", w.a, w.c1, "--key", "nosuchkey")
    assert empty.returncode == 0 and empty.stdout == ""
    assert empty.stderr.splitlines() == [f"no metric 'nosuchkey' in run {w.a}", f"no metric 'nosuchkey' in run {w.c1}"]
    one = w.cluster.cli("metrics", w.a, "--key", "nosuchkey")
    assert one.returncode == 0 and one.stderr.strip() == f"no metric 'nosuchkey' in run {w.a}"
    assert refused(w, "metrics", w.a, w.c1, code=2) == "runyard: comparing runs needs --key KEY: the metric to compare"
    assert "--all-ranks" in refused(w, "metrics", w.a, w.c1, "--key", "loss", "--all-ranks", code=2)
    # one run keeps its summary of every key
    summary = w.cluster.json("metrics", w.a)
    assert [s["key"] for s in summary["summaries"]] == ["loss"]


# --- logs --grep ----------------------------------------------------------------------------------------------

def test_logs_grep_searches_several_runs(world: World) -> None:
    w = world
    found = w.cluster.cli("logs", "--grep", "ERROR", w.a, w.c1[:12], check=True)
    assert found.stdout.splitlines() == [f"{w.a}  ERROR: disk nearly full"]
    loose = w.cluster.cli("logs", "--grep", r"err(or)?\b", "-i", w.a, w.c1, check=True).stdout.splitlines()
    assert loose == [f"{w.a}  ERROR: disk nearly full", f"{w.a}  warning: error rate fine",
                     f"{w.c1}  fold 1 had an Error"]
    # undecodable bytes are shown with the replacement character
    bad = w.cluster.cli("logs", "--grep", "Grep-Me$", w.a, check=True).stdout
    assert bad == f"{w.a}  \ufffd not utf-8 Grep-Me\n"
    none = w.cluster.cli("logs", "--grep", "no such words", w.a, check=True)
    assert none.stdout == "" and "no line of 1 run matches 'no such words'" in none.stderr
    capped = w.cluster.cli("logs", "--grep", ".", "--max-matches", "2", w.a, w.c1, check=True)
    assert len(capped.stdout.splitlines()) == 2
    assert capped.stderr.strip() == ("runyard: stopped at 2 matches, the most one search returns; narrow the pattern "
                                     "or search fewer runs")
    assert "not a valid regular expression" in refused(w, "logs", "--grep", "(unclosed", w.a)
    assert refused(w, "logs", w.a, w.c1, code=2) == ("runyard: logs of several runs need --grep PATTERN; without it, "
                                                     "name one run")
    assert "--grep" in refused(w, "logs", "--grep", "x", "-f", w.a, code=2)


def test_logs_grep_marks_the_rank_of_a_distributed_runs_lines(world: World, project: Path) -> None:
    w = world
    run_id = w.cluster.cli("submit", str(project), "-d", "-q", "--procs-per-node", "2", "--", "python", "-c",
                           "import os; print('hello from rank', os.environ['RANK'])", check=True).stdout.strip()
    assert w.cluster.wait_state(run_id, *TERMINAL)["state"] == "Completed"
    lines = sorted(w.cluster.cli("logs", "--grep", "hello", run_id, check=True).stdout.splitlines())
    assert lines == [f"{run_id} [rank 0] hello from rank 0", f"{run_id} [rank 1] hello from rank 1"]


# --- run ids by prefix ----------------------------------------------------------------------------------------

def test_every_command_takes_a_unique_prefix_of_a_run_id(world: World, tmp_path: Path) -> None:
    w = world
    prefix = w.a[:13]
    assert w.cluster.json("show", prefix)["id"] == w.a
    as_written = subprocess.run([sys.executable, "-m", "runyard", "logs", prefix], env=w.cluster.env(),
                                capture_output=True, timeout=60, check=True).stdout   # bytes: one line is not UTF-8
    assert b"ERROR: disk nearly full\n" in as_written and b"\xff not utf-8" in as_written
    assert w.cluster.json("metrics", prefix)["summaries"][0]["key"] == "loss"
    w.cluster.cli("download", prefix, "--snapshot", cwd=tmp_path, check=True)
    assert (tmp_path / f"{w.a}-snapshot" / "prints.py").read_text() == PRINTS
    done = w.cluster.cli("cancel", prefix, check=True).stdout
    assert done.strip() == f"{w.a}: already Completed"


def test_an_ambiguous_an_unknown_and_another_workspaces_prefix_are_refused_in_one_line(world: World) -> None:
    w = world
    common = os.path.commonprefix([w.a, w.b])
    assert len(common) >= 4, (w.a, w.b)
    line = refused(w, "show", common)
    assert re.fullmatch(rf"runyard: run id prefix '{common}' is ambiguous: ({common}\w+, )+({common}\w+|\.\.\.); "
                        "give more characters", line), line
    assert w.a in line and w.b in line
    assert refused(w, "show", "zzzzzzzz") == "runyard: no run 'zzzzzzzz'"
    assert refused(w, "logs", w.a[:3]) == f"runyard: no run '{w.a[:3]}' (a run id prefix needs at least 4 characters)"
    for args in (("show", w.a[:12]), ("show", w.a), ("runs", "--parent", w.a), ("cancel", w.a[:12]),
                 ("logs", "--grep", "x", w.a[:12])):
        assert refused(w, *args, env=w.other_env).startswith("runyard: no run '"), args
