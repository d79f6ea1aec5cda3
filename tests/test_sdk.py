"""The in-script SDK: records reach the file the agent tails, with nothing but the standard library installed.

Subprocess tests run a real script with `python -S` and only a copy of the SDK on PYTHONPATH, so any import of a
third-party module fails there. In-process tests build a Run from an explicit environment.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import pytest

import runyard
from agent.records import Record, RecordTail
from runyard import Run
from runyard.sdk import MAX_BUFFERED_RECORDS

DEADLINE_S = 20.0


# ---------------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture
def sdk_dir(tmp_path: Path) -> Path:
    """A directory holding only the SDK's files, as a run's PYTHONPATH would."""
    package = tmp_path / "sdk" / "runyard"
    package.mkdir(parents=True)
    source = Path(runyard.__file__).parent
    for name in ("__init__.py", "sdk.py", "ids.py"):
        shutil.copy(source / name, package / name)
    return package.parent


def _env(sdk_dir: Path, **runyard_env: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNYARD_", "PYTHON"))}
    return {**env, "PYTHONPATH": str(sdk_dir), **runyard_env}


def _script(body: str) -> list[str]:
    return [sys.executable, "-S", "-c", textwrap.dedent(body)]


def _run(body: str, *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_script(body), env=env, cwd=cwd, capture_output=True, text=True, timeout=DEADLINE_S)


def _read_until(tail: RecordTail, count: int, *, deadline_s: float = DEADLINE_S) -> list[Record]:
    """Poll the tail until `count` records arrived or the deadline passed."""
    records: list[Record] = []
    deadline = time.monotonic() + deadline_s
    while len(records) < count and time.monotonic() < deadline:
        batch = tail.read_new()
        records.extend(batch)
        if not batch:
            time.sleep(0.01)
    return records


def _online(tmp_path: Path) -> tuple[Run, RecordTail]:
    path = tmp_path / "records.jsonl"
    run = Run._from_environ({"RUNYARD_RUN_ID": "r1", "RUNYARD_RECORDS_FILE": str(path)}, cwd=tmp_path)
    return run, RecordTail(path)


# ---------------------------------------------------------------------------------------------------------
# A real run, in a subprocess


def test_records_arrive_exactly_with_only_the_stdlib(sdk_dir: Path, tmp_path: Path) -> None:
    records_file = tmp_path / "run" / "records.jsonl"
    records_file.parent.mkdir()
    records_file.touch()
    started = time.time()
    done = _run(
        """
        import json, sys
        from runyard import Run
        run = Run.get_context()
        run.log("loss", 0.5, step=1)
        run.log_metrics({"acc": 0.9})
        run.log("x", float("nan"))
        third_party = {name.split(".")[0] for name in sys.modules} - set(sys.stdlib_module_names)
        print(json.dumps({"id": run.id, "offline": run.offline, "third_party": sorted(third_party),
                          "runyard": sorted(m for m in sys.modules if m.startswith("runyard"))}))
        try:
            import yaml
        except ImportError:
            pass
        else:
            raise SystemExit("site-packages is reachable; the test proves nothing")
        """,
        env=_env(sdk_dir, RUNYARD_RUN_ID="run-1", RUNYARD_RECORDS_FILE=str(records_file)),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    seen = json.loads(done.stdout)
    assert seen == {
        "id": "run-1",
        "offline": False,
        "third_party": ["__main__", "runyard"],
        "runyard": ["runyard", "runyard.ids", "runyard.sdk"],
    }

    records = RecordTail(records_file).read_new()
    assert [(r.seq, r.metrics[:1], r.params, r.tags, r.run, r.child) for r in records[:2]] == [
        (0, (("loss", 0.5, 1),), {}, {}, "", None),
        (1, (("acc", 0.9, 0),), {}, {}, "", None),
    ]
    assert len(records) == 3 and records[2].seq == 2
    ((key, value, step),) = records[2].metrics
    assert (key, step) == ("x", 0) and math.isnan(value)
    assert all(started <= r.ts <= time.time() for r in records)
    first_line, *_ = records_file.read_text().splitlines()
    assert set(json.loads(first_line)) == {"ts", "k", "v", "s"}
    assert '"v":[NaN]' in records_file.read_text()


def test_flush_thread_delivers_while_the_script_runs(sdk_dir: Path, tmp_path: Path) -> None:
    records_file = tmp_path / "records.jsonl"
    script = """
        import sys
        from runyard import Run
        run = Run.get_context()
        run.log("loss", 0.25, step=7)
        run.set_tag("phase", "train")
        print("logged", flush=True)
        sys.stdin.readline()
        """
    env = _env(sdk_dir, RUNYARD_RUN_ID="run-2", RUNYARD_RECORDS_FILE=str(records_file))
    with subprocess.Popen(
        _script(script), env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "logged\n"
            records = _read_until(RecordTail(records_file), 2)
            still_running = proc.poll() is None
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.wait(timeout=DEADLINE_S) == 0
        finally:
            proc.kill()
    assert still_running
    assert [(r.seq, r.metrics, r.tags) for r in records] == [(0, (("loss", 0.25, 7),), {}), (1, (), {"phase": "train"})]


def test_unwritable_records_file_keeps_the_newest_records_until_it_works(sdk_dir: Path, tmp_path: Path) -> None:
    records_file = tmp_path / "missing" / "records.jsonl"
    script = f"""
        import sys
        from runyard import Run
        run = Run.get_context()
        for step in range({MAX_BUFFERED_RECORDS} + 3):
            run.log("loss", 1.0, step=step)
        run.flush()
        run.flush()
        print("ready", flush=True)
        sys.stdin.readline()
        run.log("loss", 2.0)
        """
    env = _env(sdk_dir, RUNYARD_RUN_ID="run-3", RUNYARD_RECORDS_FILE=str(records_file))
    with subprocess.Popen(
        _script(script), env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            records_file.parent.mkdir()
            tail = RecordTail(records_file)
            records = _read_until(tail, MAX_BUFFERED_RECORDS)  # the flush thread retries on its own
            _, stderr = proc.communicate("go\n", timeout=DEADLINE_S)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr
    warnings = stderr.splitlines()
    assert len(warnings) == 2, stderr
    assert warnings[0].startswith(f"runyard: cannot write records to {records_file}")
    assert warnings[1].startswith("runyard: dropped the 3 oldest records")

    records += _read_until(tail, 1)
    assert [r.seq for r in records] == list(range(MAX_BUFFERED_RECORDS + 1))
    steps = [r.metrics[0][2] for r in records]
    assert steps == [*range(3, MAX_BUFFERED_RECORDS + 3), MAX_BUFFERED_RECORDS + 3]
    assert records[-1].metrics[0][1] == 2.0


def test_offline_run_says_so_once_and_writes_its_records_in_its_cwd(sdk_dir: Path, tmp_path: Path) -> None:
    done = _run(
        """
        from runyard import Run
        run = Run.get_context()
        assert Run.get_context() is run
        run.log("loss", 0.5, step=1)
        run.log_metrics({"acc": 0.75, "lr": 0.001}, step=1)
        run.log_param("batch", 32)
        child = run.child_run("fold-1")
        child.log("loss", 0.25)
        print(run.id, run.offline, child.id)
        """,
        env=_env(sdk_dir),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    [last] = done.stdout.splitlines()      # nothing printed per call
    run_id, offline, child_id = last.split()
    assert run_id.startswith("offline-") and offline == "True"
    assert done.stderr.splitlines() == [
        f"runyard: not inside a Runyard run; offline run {run_id}: its records go to ./runyard-offline/{run_id}/"]
    assert [p.name for p in (tmp_path / "runyard-offline").iterdir()] == [run_id]
    assert [p.name for p in (tmp_path / "runyard-offline" / run_id).iterdir()] == ["records.jsonl"]
    records = RecordTail(tmp_path / "runyard-offline" / run_id / "records.jsonl").read_new()
    assert [(r.seq, r.metrics, r.params, r.run, r.child) for r in records] == [
        (0, (("loss", 0.5, 1),), {}, "", None),
        (1, (("acc", 0.75, 1), ("lr", 0.001, 1)), {}, "", None),
        (2, (), {"batch": "32"}, "", None),
        (3, (), {}, "", (child_id, "fold-1")),
        (4, (("loss", 0.25, 0),), {}, child_id, None),
    ]


def test_offline_run_in_an_unwritable_directory_warns_once(sdk_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "runyard-offline").write_text("a file where the directory should be")
    done = _run(
        """
        from runyard import Run
        run = Run.get_context()
        for step in range(3):
            run.log("loss", 0.5)
            run.flush()
        """,
        env=_env(sdk_dir),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    said, *warnings = done.stderr.splitlines()
    assert said.startswith("runyard: not inside a Runyard run; offline run ")
    assert len(warnings) == 2, done.stderr
    assert warnings[0].startswith("runyard: cannot write records to ")
    assert warnings[1].startswith("runyard: 3 records could not be written to ")


# ---------------------------------------------------------------------------------------------------------
# In process


GOOD_NAMES = ["loss", "train/loss", "val loss", "a.b-c_d", "a..b", "épsilon", "x" * 250, "1"]
BAD_NAMES = ["", "x" * 251, "/loss", "a/../b", "..", "../a", "a/..", "a//b", "a/", ".", "a/./b", "loss!",
             "a\nb", "a:b", "a\\b"]


def test_good_names_round_trip(tmp_path: Path) -> None:
    run, tail = _online(tmp_path)
    for name in GOOD_NAMES:
        run.log(name, 1.0, step=0)
        run.log_param(name, "p")
        run.set_tag(name, "t")
    run.flush()
    records = tail.read_new()
    assert [r.metrics for r in records[0::3]] == [((name, 1.0, 0),) for name in GOOD_NAMES]
    assert [r.params for r in records[1::3]] == [{name: "p"} for name in GOOD_NAMES]
    assert [r.tags for r in records[2::3]] == [{name: "t"} for name in GOOD_NAMES]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_raise_before_anything_is_buffered(tmp_path: Path, name: str) -> None:
    run, tail = _online(tmp_path)
    with pytest.raises(ValueError, match="name"):
        run.log(name, 1.0)
    with pytest.raises(ValueError, match="name"):
        run.log_metrics({"fine": 1.0, name: 2.0})
    with pytest.raises(ValueError, match="name"):
        run.log_param(name, 1)
    with pytest.raises(ValueError, match="name"):
        run.set_tag(name, 1)
    run.log("fine", 3.0)
    run.flush()
    assert [r.metrics for r in tail.read_new()] == [(("fine", 3.0, 0),)]


@pytest.mark.parametrize("value", [True, False, "0.5", None, 1j, [1.0], b"1"])
def test_metric_value_must_be_a_real_number(tmp_path: Path, value: object) -> None:
    run, _ = _online(tmp_path)
    with pytest.raises(TypeError, match="real number"):
        run.log("loss", value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("step", "error"), [(True, TypeError), (1.5, TypeError), ("3", TypeError),
                                             (2**63, ValueError), (-(2**63) - 1, ValueError)])
def test_step_must_be_a_64_bit_int(tmp_path: Path, step: object, error: type[Exception]) -> None:
    run, _ = _online(tmp_path)
    with pytest.raises(error, match="step"):
        run.log("loss", 1.0, step=step)  # type: ignore[arg-type]


def test_values_are_kept_as_given(tmp_path: Path) -> None:
    run, tail = _online(tmp_path)
    run.log_metrics({"int": 3, "fraction": Fraction(1, 4), "inf": math.inf, "ninf": -math.inf}, step=2**63 - 1)
    run.log_param("lr", 0.1)
    run.set_tag("long", "v" * 6000)
    with pytest.raises(ValueError, match="6000"):
        run.set_tag("longer", "v" * 6001)
    run.flush()
    metrics, param, tag = tail.read_new()
    step = 2**63 - 1
    assert metrics.metrics == (("int", 3.0, step), ("fraction", 0.25, step), ("inf", math.inf, step),
                               ("ninf", -math.inf, step))
    assert param.params == {"lr": "0.1"} and tag.tags == {"long": "v" * 6000}


def test_default_steps_count_per_key_and_follow_explicit_steps(tmp_path: Path) -> None:
    run, tail = _online(tmp_path)
    run.log("a", 1.0)
    run.log("a", 1.0)
    run.log("b", 1.0)
    run.log("a", 1.0, step=10)
    run.log_metrics({"a": 1.0, "b": 1.0})
    run.flush()
    steps = [metric[::2] for r in tail.read_new() for metric in r.metrics]
    assert steps == [("a", 0), ("a", 1), ("b", 0), ("a", 10), ("a", 11), ("b", 1)]


def test_child_run_records_are_tagged_with_its_id(tmp_path: Path) -> None:
    run, tail = _online(tmp_path)
    run.log("loss", 1.0)
    child = run.child_run("fold-1")
    child.log("loss", 2.0)
    grandchild = child.child_run("inner")
    grandchild.set_tag("k", "v")
    run.flush()
    assert child.id != run.id and len(child.id) == 18 and not child.offline
    assert [(r.seq, r.run, r.child, r.metrics, r.tags) for r in tail.read_new()] == [
        (0, "", None, (("loss", 1.0, 0),), {}),
        (1, "", (child.id, "fold-1"), (), {}),
        (2, child.id, None, (("loss", 2.0, 0),), {}),
        (3, child.id, (grandchild.id, "inner"), (), {}),
        (4, grandchild.id, None, (), {"k": "v"}),
    ]


def test_flush_writes_at_once(tmp_path: Path) -> None:
    run, tail = _online(tmp_path)
    for step in range(50):
        run.log("loss", float(step), step=step)
    run.flush()
    assert [r.metrics[0][2] for r in tail.read_new()] == list(range(50))


def test_without_both_variables_the_run_is_offline(tmp_path: Path) -> None:
    run = Run._from_environ({"RUNYARD_RUN_ID": "r1"}, cwd=tmp_path)
    assert run.offline and run.id.startswith("offline-")
    run.flush()
    assert not (tmp_path / "runyard-offline").exists()  # created lazily, only for a record


def test_a_records_file_named_for_any_rank_becomes_the_process_own(tmp_path: Path) -> None:
    # a torchrun launcher's workers share its environment: `{RANK}` in the name becomes each worker's RANK
    template = str(tmp_path / "records.rank-{RANK}.jsonl")
    run = Run._from_environ({"RUNYARD_RUN_ID": "r1", "RUNYARD_RECORDS_FILE": template, "RANK": "3"}, cwd=tmp_path)
    run.log("loss", 0.5)
    run.flush()
    assert [r.metrics for r in RecordTail(tmp_path / "records.rank-3.jsonl").read_new()] == [(("loss", 0.5, 0),)]


def test_a_loop_logging_faster_than_the_flush_thread_writes_is_held_back_not_dropped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "records.jsonl"
    run = Run._from_environ({"RUNYARD_RUN_ID": "r1", "RUNYARD_RECORDS_FILE": str(path)}, cwd=tmp_path)
    records = run._records
    records._stop.set()                 # no flush thread at all: the slowest writer there can be
    records._max_buffered = 30_000      # a cap the loop below passes three times over
    for step in range(100_000):
        run.log("loss", 0.5, step=step)
    run.flush()
    tail = RecordTail(path, max_lines_per_call=1_000_000)
    assert [r.metrics[0][2] for r in tail.read_new()] == list(range(100_000))
    assert "dropped" not in capsys.readouterr().err
