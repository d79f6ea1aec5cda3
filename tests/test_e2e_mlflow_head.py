"""The head's MLflow read API, driven by the real MLflow client from the test process as from a workstation: runs
log metrics, params and tags with the Runyard SDK and write outputs; `mlflow.search_runs`, `MlflowClient.get_run`
and `get_metric_history`, and `mlflow.artifacts.download_artifacts` read them back over HTTPS with a token."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from protos import runyard_pb2 as pb
from runyard import pki
from runyard.client import Client
from runyard.config import ClientConfig, write_client_config
from testbed.harness import Cluster, wait_until

pytestmark = pytest.mark.timeout(240)

mlflow = pytest.importorskip("mlflow")
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

EXPERIMENT = "mlflow-head"
TRAIN = """\
import os, sys, time
from runyard import Run

lr, final = sys.argv[1], float(sys.argv[2])
run = Run.get_context()
run.log_param("lr", lr)
run.set_tag("team", "cv")
for step in range(5):
    run.log("loss", final + (4 - step) * 0.25, step=step)
os.makedirs("outputs/model", exist_ok=True)
with open("outputs/model/weights.txt", "w") as f:
    f.write(f"weights for lr={lr}\\n")
if len(sys.argv) > 3:       # a parent that keeps its child's files: waits for the child's id
    gate = sys.argv[3]
    while not os.path.exists(gate):
        time.sleep(0.05)
    child = open(gate).read().strip()
    os.makedirs(f"outputs/runs/{child}", exist_ok=True)
    with open(f"outputs/runs/{child}/note.txt", "w") as f:
        f.write("kept by the parent\\n")
"""


@dataclass
class Tracked:
    runs: dict[str, str]                # name -> run id
    child: str
    parent: str
    ready: dict[str, Any]


@pytest.fixture(scope="module")
def tracked(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    project = tmp_path_factory.mktemp("mlflow-project")
    (project / "train.py").write_text(TRAIN)
    shared = Path(tempfile.mkdtemp(prefix="runyard-mlflow-"))
    shared.chmod(0o1777)
    try:
        runs: dict[str, str] = {}
        for name, lr, final in (("a", "0.1", "0.2"), ("b", "0.1", "0.7"), ("c", "0.01", "0.3"), ("d", "0.1", "0.4")):
            runs[name] = cluster.cli("submit", str(project), "-e", EXPERIMENT, "-n", f"run-{name}", "-d", "-q", "--",
                                     "python", "train.py", lr, final, check=True).stdout.strip()
        gate = shared / "child-id"
        parent = cluster.cli("submit", str(project), "-e", EXPERIMENT, "-n", "parent", "-d", "-q", "--",
                             "python", "train.py", "0.5", "0.9", str(gate), check=True).stdout.strip()
        client = cluster.client()
        sha = client.get_run(parent).snapshot_sha256
        child = client.submit(pb.SubmitRequest(
            experiment=EXPERIMENT, display_name="child", snapshot_sha256=sha, parent_run_id=parent,
            spec=pb.RunSpec(argv=["python", "-c", "pass"]))).run_id
        tmp = shared / "child-id.tmp"
        tmp.write_text(child)
        tmp.chmod(0o644)
        tmp.rename(gate)
        for run_id in [*runs.values(), parent, child]:
            assert cluster.wait_state(run_id, "Completed", "Failed", "Canceled", timeout_s=90)["state"] == "Completed"
        ready = json.loads((cluster.head.data_dir / "ready.json").read_text())
        assert ready["mlflow_url"] == cluster.head.mlflow_url
        yield Tracked(runs, child, parent, ready)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def workstation(monkeypatch: pytest.MonkeyPatch, cluster: Cluster, tracked: Tracked) -> MlflowClient:
    """The environment `runyard mlflow-env` prints, as a workstation's shell would have it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.ready["mlflow_url"])
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", cluster.head.token)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cluster.head.ca_file))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(tracked.ready["mlflow_url"])
    return MlflowClient()


def test_the_ready_file_and_mlflow_env_name_the_api(cluster: Cluster, tracked: Tracked) -> None:
    url = tracked.ready["mlflow_url"]
    assert url.startswith("https://127.0.0.1:")
    lines = cluster.cli("mlflow-env", check=True, env=cluster.env(RUNYARD_MLFLOW_URL=url)).stdout.splitlines()
    assert lines == [f"export MLFLOW_TRACKING_URI={url}", f"export MLFLOW_TRACKING_TOKEN={cluster.head.token}",
                     f"export MLFLOW_TRACKING_SERVER_CERT_PATH={cluster.head.ca_file.resolve()}"]


@pytest.mark.parametrize("written, extra, uri", [
    ({"mlflow_url": "https://head.example:9000"}, {}, "https://head.example:9000"),
    ({}, {}, "https://head.example:7435"),                                     # the head's port + 2
    ({}, {"RUNYARD_MLFLOW_URL": "https://other:1"}, "https://other:1"),
])
def test_mlflow_env_comes_from_the_client_config(tmp_path: Path, written: dict[str, str], extra: dict[str, str],
                                                 uri: str) -> None:
    path = tmp_path / "config.toml"
    write_client_config(ClientConfig("head.example:7433", "tok en", pki.create_ca("c").cert_pem, **written), path)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}, "RUNYARD_CONFIG": str(path), **extra}
    result = subprocess.run([sys.executable, "-m", "runyard", "mlflow-env"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"export MLFLOW_TRACKING_URI={uri}", "export MLFLOW_TRACKING_TOKEN='tok en'",
                                          f"export MLFLOW_TRACKING_SERVER_CERT_PATH={tmp_path / 'config-ca.pem'}"]


def test_mlflow_env_without_a_config_is_one_line(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")},
           "RUNYARD_CONFIG": str(tmp_path / "none.toml")}
    result = subprocess.run([sys.executable, "-m", "runyard", "mlflow-env"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("runyard: ") and len(result.stderr.strip().splitlines()) == 1


def test_search_runs_filters_orders_and_has_the_columns(workstation: MlflowClient, tracked: Tracked) -> None:
    frame = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="metrics.loss < 0.5 and params.lr = '0.1'",
                               order_by=["metrics.loss DESC"])
    assert list(frame["run_id"]) == [tracked.runs["d"], tracked.runs["a"]]
    assert list(frame["metrics.loss"]) == pytest.approx([0.4, 0.2])
    assert list(frame["params.lr"]) == ["0.1", "0.1"]
    assert list(frame["tags.team"]) == ["cv", "cv"]
    assert list(frame["tags.mlflow.runName"]) == ["run-d", "run-a"]
    assert list(frame["status"]) == ["FINISHED", "FINISHED"]
    assert set(frame["experiment_id"]) == {EXPERIMENT}
    assert list(frame["artifact_uri"]) == [f"mlflow-artifacts:/{EXPERIMENT}/{tracked.runs['d']}/artifacts",
                                           f"mlflow-artifacts:/{EXPERIMENT}/{tracked.runs['a']}/artifacts"]

    ordered = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="attributes.status = 'FINISHED' "
                                 "and tags.team LIKE 'c%' and attributes.run_name != 'parent'",
                                 order_by=["params.lr ASC", "metrics.loss ASC"])
    names = [tracked.runs[n] for n in ("c", "a", "d", "b")]
    assert list(ordered["run_id"]) == names
    picked = mlflow.search_runs(experiment_names=[EXPERIMENT],
                                filter_string=f"attributes.run_id IN ('{tracked.runs['b']}', '{tracked.child}')")
    assert set(picked["run_id"]) == {tracked.runs["b"], tracked.child}


def test_search_runs_pages_through_the_client(workstation: MlflowClient, tracked: Tracked) -> None:
    experiment = workstation.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None and experiment.experiment_id == EXPERIMENT
    seen: list[str] = []
    token = None
    while True:
        page = workstation.search_runs([EXPERIMENT], max_results=2, page_token=token, order_by=["attributes.run_name"])
        seen += [r.info.run_name for r in page]
        token = page.token
        if not token:
            break
    assert seen == ["child", "parent", "run-a", "run-b", "run-c", "run-d"]
    assert [e.name for e in workstation.search_experiments(filter_string="name LIKE 'mlflow-h%'")] == [EXPERIMENT]
    assert list(workstation.search_experiments(filter_string="name = 'nothing-here'")) == []


def test_bulk_history_and_the_tracking_listing(cluster: Cluster, workstation: MlflowClient, tracked: Tracked) -> None:
    url, ca = tracked.ready["mlflow_url"], str(cluster.head.ca_file)
    auth = {"Authorization": f"Bearer {cluster.head.token}"}
    answer = requests.get(f"{url}/api/2.0/mlflow/metrics/get-history-bulk-interval", verify=ca, timeout=30,
                          headers=auth, params={"run_ids": [tracked.runs["a"], tracked.runs["b"]], "metric_key": "loss",
                                                "start_step": 1, "end_step": 3, "max_results": 2})
    assert answer.status_code == 200, answer.text
    points = [(m["run_id"], m["step"]) for m in answer.json()["metrics"]]
    first, second = sorted([tracked.runs["a"], tracked.runs["b"]])
    assert points == [(first, 1), (first, 3), (second, 1), (second, 3)]     # the ends of the interval, per run
    answer = requests.get(f"{url}/api/2.0/mlflow/artifacts/list", verify=ca, timeout=30, headers=auth,
                          params={"run_id": tracked.runs["a"], "path": "model"})
    assert answer.json() == {"root_uri": f"mlflow-artifacts:/{EXPERIMENT}/{tracked.runs['a']}/artifacts",
                             "files": [{"path": "model/weights.txt", "is_dir": False, "file_size": 19}]}
    history = requests.get(f"{url}/api/2.0/mlflow/metrics/get-history", verify=ca, timeout=30, headers=auth,
                           params={"run_id": tracked.runs["a"], "metric_key": "loss", "max_results": 2}).json()
    steps = [m["step"] for m in history["metrics"]]
    while "next_page_token" in history:
        history = requests.get(f"{url}/api/2.0/mlflow/metrics/get-history", verify=ca, timeout=30, headers=auth,
                               params={"run_id": tracked.runs["a"], "metric_key": "loss", "max_results": 2,
                                       "page_token": history["next_page_token"]}).json()
        steps += [m["step"] for m in history["metrics"]]
    assert steps == [0, 1, 2, 3, 4]


def test_get_run_and_metric_history(workstation: MlflowClient, tracked: Tracked) -> None:
    run = workstation.get_run(tracked.runs["b"])
    assert run.info.run_id == tracked.runs["b"] and run.info.status == "FINISHED"
    assert run.info.start_time > 0 and run.info.end_time >= run.info.start_time
    assert run.data.params == {"lr": "0.1"}
    assert run.data.metrics == {"loss": pytest.approx(0.7)}
    assert run.data.tags["team"] == "cv" and run.data.tags["mlflow.runName"] == "run-b"
    assert run.data.tags["mlflow.user"] == "admin" and "mlflow.parentRunId" not in run.data.tags
    history = workstation.get_metric_history(tracked.runs["b"], "loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx([1.7, 1.45, 1.2, 0.95, 0.7])

    child = workstation.get_run(tracked.child)
    assert child.data.tags["mlflow.parentRunId"] == tracked.parent
    assert child.info.run_name == "child"


def test_download_artifacts(workstation: MlflowClient, tracked: Tracked, tmp_path: Path) -> None:
    path = mlflow.artifacts.download_artifacts(run_id=tracked.runs["a"], artifact_path="model/weights.txt",
                                               dst_path=str(tmp_path / "one"))
    assert Path(path).read_text() == "weights for lr=0.1\n"
    folder = mlflow.artifacts.download_artifacts(run_id=tracked.runs["c"], artifact_path="model",
                                                 dst_path=str(tmp_path / "two"))
    assert (Path(folder) / "weights.txt").read_text() == "weights for lr=0.01\n"
    assert [f.path for f in workstation.list_artifacts(tracked.runs["a"])] == ["model"]
    # a child without outputs of its own: its files are in its parent's, under runs/<child id>/
    note = mlflow.artifacts.download_artifacts(run_id=tracked.child, artifact_path="note.txt",
                                               dst_path=str(tmp_path / "three"))
    assert Path(note).read_text() == "kept by the parent\n"


def test_another_workspace_sees_nothing(cluster: Cluster, workstation: MlflowClient, tracked: Tracked,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(cluster.head.client_config(), timeout_s=10) as admin:
        admin.create_workspace("mlflow-other")
        secret = admin.create_token(pb.CreateTokenRequest(workspace="mlflow-other", role=pb.ROLE_VIEWER,
                                                          name="analyst")).secret
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)
    assert workstation.get_experiment_by_name(EXPERIMENT) is None
    assert len(workstation.search_runs([EXPERIMENT])) == 0
    with pytest.raises(MlflowException) as missing:
        workstation.get_run(tracked.runs["a"])
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_no_token_bad_token_and_writes_are_refused_in_mlflows_format(
        cluster: Cluster, workstation: MlflowClient, tracked: Tracked, monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca = tracked.ready["mlflow_url"], str(cluster.head.ca_file)
    get = f"{url}/api/2.0/mlflow/runs/get"
    answer = requests.get(get, params={"run_id": tracked.runs["a"]}, verify=ca, timeout=30)
    assert answer.status_code == 401 and answer.json()["error_code"] == "UNAUTHENTICATED"
    answer = requests.get(get, params={"run_id": tracked.runs["a"]}, verify=ca, timeout=30,
                          headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401 and answer.json()["error_code"] == "UNAUTHENTICATED"
    auth = {"Authorization": f"Bearer {cluster.head.token}"}
    answer = requests.get(f"{url}/api/2.0/mlflow/no/such-thing", verify=ca, timeout=30, headers=auth)
    assert answer.status_code == 404 and answer.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    answer = requests.post(f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [EXPERIMENT],
                           "filter": "metrics.loss < 'x'"}, verify=ca, timeout=30, headers=auth)
    assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    answer = requests.post(f"{url}/api/2.0/mlflow/runs/search", json={"filter": "x" * 2_000_000}, verify=ca,
                           timeout=30, headers=auth)
    assert answer.status_code == 413 and answer.json()["error_code"] == "BAD_REQUEST"
    answer = requests.post(f"{url}/api/2.0/mlflow/runs/search", data=b"{not json", verify=ca, timeout=30,
                           headers={**auth, "Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error_code"] == "MALFORMED_REQUEST"
    answer = requests.post(f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [EXPERIMENT],
                           "page_token": "garbage"}, verify=ca, timeout=30, headers=auth)
    assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    answer = requests.get(f"{url}/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/{tracked.runs['a']}/artifacts/"
                          "model/weights.txt", verify=ca, timeout=30, headers=auth)
    assert answer.status_code == 200 and answer.content == b"weights for lr=0.1\n"
    answer = requests.get(f"{url}/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/{tracked.runs['a']}/artifacts/"
                          "../../x", verify=ca, timeout=30, headers=auth)
    assert 400 <= answer.status_code < 500

    with pytest.raises(MlflowException) as write:
        workstation.log_metric(tracked.runs["a"], "loss", 0.0)
    assert write.value.error_code == "PERMISSION_DENIED" and "runyard submit" in write.value.message
    with pytest.raises(MlflowException) as create:
        workstation.create_experiment("new-one")
    assert create.value.error_code == "PERMISSION_DENIED"

    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    with pytest.raises(MlflowException) as anonymous:
        workstation.get_run(tracked.runs["a"])
    assert anonymous.value.error_code == "UNAUTHENTICATED"


def test_a_taken_mlflow_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")},
               "RUNYARD_HEAD_MLFLOW_LISTEN": f"127.0.0.1:{port}"}
        done = subprocess.run([sys.executable, "-m", "scheduler", "--data-dir", str(tmp_path / "head"),
                               "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot listen on 127.0.0.1:{port} for MLflow" in done.stderr.strip().splitlines()[-1]


@pytest.mark.timeout(120)
def test_a_plaintext_head_serves_mlflow_over_http_on_loopback(tmp_path: Path) -> None:
    plain = Cluster.start(tmp_path, agents=0, head_settings={"insecure_plaintext": True})
    try:
        url = plain.head.mlflow_url
        assert url.startswith("http://127.0.0.1:")
        answer = requests.get(f"{url}/api/2.0/mlflow/experiments/search", timeout=30)
        assert answer.status_code == 401 and answer.json()["error_code"] == "UNAUTHENTICATED"
        answer = requests.get(f"{url}/api/2.0/mlflow/experiments/search", timeout=30,
                              headers={"Authorization": f"Bearer {plain.head.token}"})
        assert answer.status_code == 200 and answer.json() == {"experiments": []}
    finally:
        plain.stop()
