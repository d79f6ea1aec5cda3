"""An unchanged MLflow script logs into its Runyard run through its agent's tracking endpoint: a real head, a
real agent, the real CLI and the real MLflow client, in a run as a user of its own."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.harness import Cluster

TRAIN = r"""
import os, shutil
import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

run_id = os.environ["RUNYARD_RUN_ID"]
mlflow.log_param("lr", 0.1)
for step in range(20):
    mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
mlflow.log_metrics({"acc": 0.5, "f1": 0.25}, step=3)
mlflow.set_tag("team", "cv")
client = MlflowClient()
client.log_batch(run_id, metrics=[Metric("lr_now", 0.05, 1700000000000, 1)], params=[Param("batch", "32")],
                 tags=[RunTag("phase", "warmup")])
os.makedirs("plots", exist_ok=True)
open("plots/curve.txt", "w").write("curve")
mlflow.log_artifact("plots/curve.txt")
mlflow.log_artifacts("plots", artifact_path="figures")
with mlflow.start_run(nested=True, run_name="inner") as inner:
    mlflow.log_metric("inner_acc", 0.9)
    mlflow.log_artifact("plots/curve.txt")
print("INNER", inner.info.run_id)

other = open("other-run.txt").read().strip()
try:
    client.log_metric(other, "loss", 1.0)
except MlflowException as err:
    print("OTHER", err.error_code)
uri, token = os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_TRACKING_TOKEN"]
answer = requests.post(uri + "/api/2.0/mlflow/runs/log-metric", headers={"Authorization": "Bearer wrong"},
                       json={"run_id": run_id, "key": "loss", "value": 1, "timestamp": 1, "step": 0})
print("WRONG", answer.status_code, answer.json()["error_code"])
answer = requests.post(uri + "/api/2.0/mlflow/runs/search", headers={"Authorization": "Bearer " + token}, json={})
print("SEARCH", answer.status_code, answer.json()["error_code"])
print("ENDPOINT", uri, token)
os.makedirs("outputs", exist_ok=True)
shutil.copyfile(os.environ["RUNYARD_RECORDS_FILE"], "outputs/records-copy.jsonl")
print("MLFLOW-DONE")
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    found = Cluster.start(tmp_path_factory.mktemp("cluster"), agents=1)
    yield found
    found.stop()


@pytest.mark.timeout(240)
def test_an_mlflow_script_logs_into_its_run(cluster: Cluster, project: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    other_id = cluster.cli("submit", str(project), "-d", "-q", "--", "python", "hello.py", check=True).stdout.strip()
    code = tmp_path / "mlflow-train"
    code.mkdir()
    (code / "train.py").write_text(TRAIN)
    (code / "other-run.txt").write_text(other_id)
    result = cluster.cli("submit", str(code), "-d", "-q", "--", "python", "train.py", check=True)
    run_id = result.stdout.strip()
    run = cluster.wait_state(run_id, "Completed", "Failed", "Canceled", timeout_s=180)
    logs = cluster.logs_text(run_id)
    assert run["state"] == "Completed", logs[-3000:]
    assert "MLFLOW-DONE" in logs and "Traceback" not in logs
    assert "OTHER PERMISSION_DENIED" in logs
    assert "WRONG 401 UNAUTHENTICATED" in logs
    assert "SEARCH 501 NOT_IMPLEMENTED" in logs
    inner = logs.split("INNER ")[1].split()[0]

    # the attempt has ended: its token is forgotten
    uri, token = logs.split("ENDPOINT ")[1].split()[:2]
    request = urllib.request.Request(uri + "/api/2.0/mlflow/runs/get?run_id=" + run_id,
                                     headers={"Authorization": "Bearer " + token})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    with refused.value as answer:
        assert answer.code == 401 and json.loads(answer.read())["error_code"] == "UNAUTHENTICATED"

    # the parent's own metrics and params reach the head like the SDK's
    metrics = cluster.json("metrics", run_id)
    summaries = {s["key"]: s for s in metrics["summaries"]}
    assert int(summaries["loss"]["count"]) == 20 and int(summaries["loss"]["last_step"]) == 19
    assert {"acc", "f1", "lr_now"} <= set(summaries)
    assert metrics["params"] == {"lr": "0.1", "batch": "32"}
    assert "lr" in cluster.cli("show", run_id, check=True).stdout

    # the nested MLflow run is a Runyard child run with its own metric, ended by the script
    child = cluster.run(inner)
    assert (child["parent_run_id"], child["display_name"], child["state"]) == (run_id, "inner", "Completed")
    assert [s["key"] for s in cluster.json("metrics", inner)["summaries"]] == ["inner_acc"]
    assert "inner_acc" not in summaries

    # and a workstation reads it all back through the head's MLflow API, with the real client
    for name, value in {"MLFLOW_TRACKING_URI": cluster.head.mlflow_url, "MLFLOW_TRACKING_TOKEN": cluster.head.token,
                        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(cluster.head.ca_file),
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}.items():
        monkeypatch.setenv(name, value)
    import mlflow
    from mlflow import MlflowClient
    mlflow.set_tracking_uri(cluster.head.mlflow_url)   # the client keeps a URI process-wide: set ours, then unset
    try:
        found = mlflow.search_runs(experiment_names=[run["experiment"]],
                                   filter_string="params.lr = '0.1' and metrics.loss < 0.1", output_format="list")
        history = MlflowClient().get_metric_history(run_id, "loss")
        nested = MlflowClient().get_run(inner)
    finally:
        mlflow.set_tracking_uri(None)
    assert [r.info.run_id for r in found] == [run_id]
    assert [(m.step, m.value) for m in history] == [(step, 1.0 / (step + 1)) for step in range(20)]
    assert nested.data.tags["mlflow.parentRunId"] == run_id and nested.info.status == "FINISHED"
    assert nested.data.metrics == {"inner_acc": 0.9}

    # what the agent wrote for the nested run, and the artifacts, are in the outputs
    out = tmp_path / "out"
    cluster.cli("download", run_id, "--outputs", str(out), check=True)
    lines = [json.loads(line) for line in (out / "records-copy.jsonl").read_text().splitlines()]
    assert {"id": inner, "name": "inner"} in [line["child"] for line in lines if "child" in line]
    assert [key for line in lines if line.get("run") == inner for key in line.get("k", [])] == ["inner_acc"]
    assert [line["end"] for line in lines if line.get("run") == inner and "end" in line] == ["FINISHED"]
    assert (out / "curve.txt").read_text() == "curve"
    assert (out / "figures" / "curve.txt").read_text() == "curve"
    assert (out / "runs" / inner / "curve.txt").read_text() == "curve"
