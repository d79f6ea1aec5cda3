"""The CLI imports what a command needs and no more: `runyard --version` is answered before click is imported, a
command's `--help` imports neither gRPC nor rich nor pydantic, and only `submit` imports pydantic (the job file).

Checked in a fresh interpreter (`sys.modules` at exit), not by timing: the time it takes is the bench's (S13)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("click", "grpc", "google.protobuf", "rich", "pydantic", "yaml", "pathspec", "protos.runyard_pb2",
         "runyard.sdk", "runyard.cli_admin", "runyard.cli_env")


def imported(*args: str, env: dict[str, str] | None = None) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run `runyard ARGS` in a fresh interpreter; the heavy modules it imported, and what it printed."""
    script = textwrap.dedent(f"""
        import atexit, json, sys
        heavy = {HEAVY!r}
        atexit.register(lambda: sys.__stderr__.write("\\nMODULES " + json.dumps(
            sorted(h for h in heavy if h in sys.modules)) + "\\n"))
        sys.argv = ["runyard", *{list(args)!r}]
        from runyard.__main__ import main
        main()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(ROOT / "nowhere"),
                               **(env or {})})
    line = [x for x in done.stderr.splitlines() if x.startswith("MODULES ")][-1]
    return set(json.loads(line.removeprefix("MODULES "))), done


@pytest.mark.timeout(120)
def test_version_imports_nothing_of_the_cli() -> None:
    modules, done = imported("--version")
    assert done.returncode == 0 and done.stdout.startswith("runyard, version ")
    assert modules == set()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [("runs",), ("show",), ("nodes",), ("logs",), ("metrics",), ("download",)])
def test_a_commands_help_imports_neither_grpc_nor_rich_nor_pydantic(command: tuple[str, ...]) -> None:
    modules, done = imported(*command, "--help")
    assert done.returncode == 0 and "Usage: runyard" in done.stdout
    assert modules == {"click"}


@pytest.mark.timeout(120)
def test_only_submit_imports_the_job_file() -> None:
    modules, done = imported("submit", "--help")
    assert done.returncode == 0 and modules == {"click"}       # its help only parses options
    modules, done = imported("submit", "-f", "nosuch.yml", "-d")
    assert done.returncode == 2 and done.stderr.startswith("runyard: ") and "pydantic" in modules


@pytest.mark.timeout(120)
def test_a_plain_submit_reads_no_yaml_validates_with_no_model_and_draws_nothing(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print(1)\n")
    nowhere = {"RUNYARD_ADDRESS": "127.0.0.1:9", "RUNYARD_TOKEN": "t", "RUNYARD_INSECURE": "1",
               "RUNYARD_CONFIG": str(tmp_path / "none.toml"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    modules, done = imported("submit", "-d", str(code), "--", "true", env=nowhere)
    assert done.returncode == 1 and done.stderr.startswith("runyard: cannot reach the head at 127.0.0.1:9")
    assert modules == {"click", "grpc", "google.protobuf", "protos.runyard_pb2"}      # no job file: no pydantic
    with_flag, _ = imported("submit", "-d", "--cpus", "2", str(code), "--", "true", env=nowhere)
    assert "pydantic" in with_flag                                              # a flag the job file's model checks


@pytest.mark.timeout(120)
def test_a_usage_mistake_imports_nothing_heavy() -> None:
    modules, done = imported("runs", "--state")
    assert done.returncode == 2 and modules == {"click"}
    assert done.stderr.splitlines()[0] == "runyard: Option '--state' requires an argument. (see runyard runs --help)"


def test_the_stream_names_logs_takes_are_renders() -> None:
    from runyard import cli, render

    assert sorted(cli.STREAM_NAMES) == sorted(render.STREAMS)
