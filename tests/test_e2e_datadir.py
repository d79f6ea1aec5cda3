"""A data directory in use is refused, whole: a second head, a second `runyard up`, an `up` over a head left running."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from testbed.harness import Head, wait_until


def _files(root: Path) -> dict[str, str]:
    """Every file under root with its sha256, except the database (the running head owns it and may write it)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith("runyard.db")
    }


def _env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env["RUNYARD_CONFIG"] = str(config)
    return env


def _one_line_refusal(result: subprocess.CompletedProcess[str], pid: int) -> str:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"in use by process {pid}" in lines[0], lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def no_daemon_left(tmp_path: Path) -> Iterator[None]:
    """A head that was wrongly started beside the first one lives in its own session: end it with the test."""
    yield
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if str(tmp_path) in cmdline and ("-m scheduler" in cmdline or "-m agent" in cmdline):
            proc.kill()


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    found = Head(tmp_path / "local" / "head", tmp_path / "head.log")
    found.start()
    yield found
    found.stop()


def test_a_second_head_on_a_data_dir_in_use_is_refused_naming_the_pid_and_changes_no_file(
        head: Head, tmp_path: Path) -> None:
    before = _files(head.data_dir)
    second = subprocess.run(
        [sys.executable, "-m", "scheduler", "--config", str(head.data_dir / "head.toml"), "--data-dir",
         str(head.data_dir), "--listen", "127.0.0.1:0", "--ready-file", str(head.data_dir / "ready.json")],
        env=_env(tmp_path / "config.toml"), capture_output=True, text=True, timeout=30,
    )
    line = _one_line_refusal(second, head.proc.pid)  # type: ignore[union-attr]
    assert line.startswith(f"runyard-head: data directory {head.data_dir} is in use")
    assert _files(head.data_dir) == before
    assert (head.data_dir / "runyard.lock").read_text() == f"{head.proc.pid}\n"  # type: ignore[union-attr]
    assert head.proc.poll() is None  # type: ignore[union-attr]


def test_runyard_up_on_a_dir_whose_head_is_still_running_is_refused_before_writing(
        head: Head, tmp_path: Path) -> None:
    """A head left over from an `up` that was killed: a new `up` must not rewrite its config or start beside it."""
    data_dir = head.data_dir.parent
    before = _files(data_dir)
    config = tmp_path / "config.toml"
    result = subprocess.run([sys.executable, "-m", "runyard", "up", "--agents", "1", "--data", str(data_dir)],
                            env=_env(config), capture_output=True, text=True, timeout=60)
    _one_line_refusal(result, head.proc.pid)  # type: ignore[union-attr]
    after = _files(data_dir)
    assert after.pop("runyard.lock", None) == hashlib.sha256(b"").hexdigest()  # the only new file: empty
    assert after == before
    assert not config.exists()


def test_a_second_runyard_up_is_refused_and_leaves_the_config_and_the_first_cluster_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "local"
    config = tmp_path / "config.toml"
    up = subprocess.Popen([sys.executable, "-m", "runyard", "up", "--agents", "1", "--data", str(data_dir)],
                          env=_env(config), stderr=subprocess.PIPE, text=True)
    try:
        assert up.stderr is not None
        seen = []
        for line in up.stderr:
            seen.append(line)
            if "cluster ready" in line or up.poll() is not None:
                break
        assert "cluster ready" in "".join(seen), "".join(seen)
        before = _files(data_dir)
        config_before = config.read_bytes()

        second = subprocess.run([sys.executable, "-m", "runyard", "up", "--agents", "1", "--data", str(data_dir)],
                                env=_env(config), capture_output=True, text=True, timeout=60)
        line = _one_line_refusal(second, up.pid)
        assert line.startswith(f"runyard: data directory {data_dir} is in use")
        assert config.read_bytes() == config_before
        assert {k: v for k, v in _files(data_dir).items() if k.endswith((".toml", ".lock", ".json", ".token"))} == \
            {k: v for k, v in before.items() if k.endswith((".toml", ".lock", ".json", ".token"))}
        nodes = subprocess.run([sys.executable, "-m", "runyard", "nodes"], env=_env(config), capture_output=True,
                               text=True, timeout=60)
        assert nodes.returncode == 0 and "Ready" in nodes.stdout, nodes.stderr
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)
    assert up.returncode == 0
    wait_until("the data dir to be free", lambda: subprocess.run(
        [sys.executable, "-c", f"from runyard.datadir import DataDirLock; DataDirLock.check({str(data_dir)!r})"],
        capture_output=True).returncode == 0, timeout_s=10)
