"""`runyard up` as a new user runs it: a local cluster, a config that makes `runyard submit` just work, Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from testbed.harness import wait_until


def _cluster_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if str(data_dir) in cmdline and ("-m scheduler" in cmdline or "-m agent" in cmdline):
            found.append(proc)
    return found


def test_up_writes_the_config_runs_work_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "local"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env["RUNYARD_CONFIG"] = str(tmp_path / "config.toml")
    up = subprocess.Popen([sys.executable, "-m", "runyard", "up", "--agents", "2", "--data", str(data_dir)],
                          env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert up.stderr is not None
        seen = []
        for line in up.stderr:
            seen.append(line)
            if "cluster ready" in line or up.poll() is not None:
                break
        assert "cluster ready" in "".join(seen), "".join(seen)
        config = (tmp_path / "config.toml").read_text()
        assert "address = " in config and "token = " in config
        mlflow_url = next(line.split("=", 1)[1].strip() for line in seen if "MLFLOW_TRACKING_URI=" in line)
        assert mlflow_url.startswith("https://127.0.0.1:") and f'mlflow_url = "{mlflow_url}"' in config
        assert any("MLFLOW_TRACKING_SERVER_CERT_PATH=" in line for line in seen)
        metrics_url = next(word for line in seen for word in line.split() if word.endswith("/metrics"))
        assert metrics_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            assert b"\n# TYPE runyard_nodes gauge\n" in response.read()
        exports = subprocess.run([sys.executable, "-m", "runyard", "mlflow-env"], env=env, capture_output=True,
                                 text=True, timeout=60, check=True).stdout.splitlines()
        assert exports[0] == f"export MLFLOW_TRACKING_URI={mlflow_url}"
        assert [line.split("=", 1)[0] for line in exports] == [
            "export MLFLOW_TRACKING_URI", "export MLFLOW_TRACKING_TOKEN", "export MLFLOW_TRACKING_SERVER_CERT_PATH"]
        assert oct((tmp_path / "config.toml").stat().st_mode & 0o777) == "0o600"
        assert len(_cluster_processes(data_dir)) == 3

        project = tmp_path / "project"
        project.mkdir()
        result = subprocess.run([sys.executable, "-m", "runyard", "submit", str(project), "--", "echo", "hi"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout == "hi\n", result.stderr
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)
    assert up.returncode == 0
    wait_until("head and agents to exit", lambda: not _cluster_processes(data_dir), timeout_s=10)


def test_up_says_why_its_head_could_not_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env["RUNYARD_CONFIG"] = str(tmp_path / "config.toml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "runyard", "up", "--agents", "1", "--port", str(port),
                                 "--data", str(tmp_path / "local")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the head exited with code" in lines[0] and f"127.0.0.1:{port}" in lines[0], lines
    assert not (tmp_path / "config.toml").exists()
