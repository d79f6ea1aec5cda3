"""The agent's MLflow endpoint (`agent/tracking.py`) on loopback: the real MLflow client in a real process logs
into the records file in the SDK's format; other runs, other tokens and unsupported calls get MLflow's errors."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import AgentConfig
from agent.outputs_archive import zip_outputs
from agent.records import RecordTail
from agent.rundirs import AttemptDirs
from agent.runenv import run_environment
from agent.runusers import RunUser
from agent.tracking import ARTIFACTS_ROOT, TrackingServer, artifact_sources, new_token
from protos import runyard_pb2 as pb
from runyard.errors import UsageError

RUN_ID = "01hzzzzzzzabcdefgh"
EXPERIMENT = "vision"

SCRIPT = r"""
import os, sys
import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

mlflow.log_param("lr", 0.1)
for step in range(5):
    mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
mlflow.log_metrics({"acc": 0.5, "f1": 0.25}, step=7)
mlflow.set_tag("team", "cv")
client = MlflowClient()
client.log_batch(os.environ["RUNYARD_RUN_ID"], metrics=[Metric("b", 1.0, 1000, 1), Metric("b", 2.0, 2000, 2)],
                 params=[Param("batch", "32")], tags=[RunTag("phase", "warmup")])
history = client.get_metric_history(os.environ["RUNYARD_RUN_ID"], "loss")
assert [m.step for m in history] == [0, 1, 2, 3, 4], history
open("model.txt", "w").write("weights")
mlflow.log_artifact("model.txt")
mlflow.log_artifact("model.txt", artifact_path="sub/dir")
assert sorted(f.path for f in mlflow.artifacts.list_artifacts(run_id=os.environ["RUNYARD_RUN_ID"])) == ["model.txt", "sub"]
with mlflow.start_run(nested=True, run_name="inner") as inner:
    mlflow.log_metric("inner_acc", 0.9)
    mlflow.log_artifact("model.txt")
    with mlflow.start_run(nested=True, run_name="deeper"):
        mlflow.log_param("depth", 2)
got = client.get_run(inner.info.run_id)
assert got.info.status == "FINISHED" and got.data.metrics == {"inner_acc": 0.9}, got
assert got.data.tags["mlflow.parentRunId"] == os.environ["RUNYARD_RUN_ID"], got.data.tags
print("INNER", inner.info.run_id)
own = client.get_run(os.environ["RUNYARD_RUN_ID"])
assert own.data.params == {"lr": "0.1", "batch": "32"} and own.data.metrics["loss"] == 0.2, own.data
assert own.info.artifact_uri == "mlflow-artifacts:/vision/%s/artifacts" % os.environ["RUNYARD_RUN_ID"]
print("DONE")
"""


@dataclass
class Endpoint:
    server: TrackingServer
    token: str
    records: Path
    staging: Path

    def env(self, token: str | None = None) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "HOME": str(self.staging.parent), "MLFLOW_TRACKING_URI": self.server.uri,
                "MLFLOW_TRACKING_TOKEN": self.token if token is None else token, "MLFLOW_RUN_ID": RUN_ID,
                "MLFLOW_EXPERIMENT_NAME": EXPERIMENT, "RUNYARD_RUN_ID": RUN_ID,
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.records.read_text().splitlines()]


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[Endpoint]:
    server = TrackingServer("127.0.0.1:0", max_artifact_bytes=1 << 20)
    await server.start()
    records, staging = tmp_path / "records.jsonl", tmp_path / "artifacts"
    records.touch()
    staging.mkdir(mode=0o700)
    token = new_token()
    server.register(token, run_id=RUN_ID, experiment=EXPERIMENT, records=records, staging=staging)
    try:
        yield Endpoint(server, token, records, staging)
    finally:
        await server.close()


def _points(line: dict[str, Any]) -> list[tuple[str, float, int]]:
    """A records line's metric points as (key, value, step)."""
    steps = line.get("s", [])
    keys = line.get("k", [])
    return list(zip(keys, line.get("v", []), [steps] * len(keys) if isinstance(steps, int) else steps))


async def _python(code: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env, cwd=cwd,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.timeout(120)
async def test_the_mlflow_client_logs_into_the_records_file(endpoint: Endpoint, tmp_path: Path) -> None:
    code, out, err = await _python(SCRIPT, endpoint.env(), tmp_path)
    assert code == 0 and "DONE" in out, err[-3000:]
    inner = out.split("INNER ")[1].split()[0]
    lines = endpoint.lines()

    own = [line for line in lines if "run" not in line and "child" not in line]
    points = [point for line in own for point in _points(line)]
    assert points[:5] == [("loss", 1.0 / (s + 1), s) for s in range(5)]
    assert ("acc", 0.5, 7) in points and ("f1", 0.25, 7) in points
    params = {k: v for line in own for k, v in line.get("params", {}).items()}
    tags = {k: v for line in own for k, v in line.get("tags", {}).items()}
    assert params == {"lr": "0.1", "batch": "32"}
    assert tags["team"] == "cv" and tags["phase"] == "warmup"
    # a batch keeps each point's own timestamp: one line per distinct timestamp
    batch = [line for line in own if "b" in line.get("k", [])]
    assert [(line["ts"], _points(line)) for line in batch] == [(1.0, [("b", 1.0, 1)]), (2.0, [("b", 2.0, 2)])]
    assert [line for line in batch if "params" in line][0]["params"] == {"batch": "32"}

    announced = [line["child"] | {"under": line.get("run", "")} for line in lines if "child" in line]
    assert announced[0] == {"id": inner, "name": "inner", "under": ""}
    deeper = announced[1]["id"]
    assert announced[1] == {"id": deeper, "name": "deeper", "under": inner}
    assert [_points(line) for line in lines if line.get("run") == inner and "k" in line] == [[("inner_acc", 0.9, 0)]]
    assert [line["end"] for line in lines if "end" in line and line["run"] == deeper] == ["FINISHED"]
    assert [line["end"] for line in lines if "end" in line and line["run"] == inner] == ["FINISHED"]
    assert not any("end" in line and "run" not in line for line in lines)   # the attempt's run: its process says

    # the agent's tail reads every line as a record, in order
    records = RecordTail(endpoint.records).read_new()
    assert len(records) == len(lines)
    assert [r.child for r in records if r.child] == [(inner, "inner"), (deeper, "deeper")]

    # artifacts: the run's at the top of the outputs archive, a child's under runs/<id>/
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "log.txt").write_text("output")
    archive = tmp_path / "outputs.zip"
    zipped = zip_outputs(outputs, archive, max_bytes=1 << 20, extra=artifact_sources(endpoint.staging, RUN_ID))
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["log.txt", "model.txt", f"runs/{inner}/model.txt", "sub/dir/model.txt"]
        assert zf.read("sub/dir/model.txt") == b"weights"
    assert zipped.files == 4


async def _call(endpoint: Endpoint, method: str, path: str, *, token: str | None = None, **kwargs: Any
                ) -> tuple[int, dict[str, Any]]:
    headers = {} if token == "" else {"Authorization": f"Bearer {endpoint.token if token is None else token}"}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, endpoint.server.uri + path, headers=headers, **kwargs) as response:
            return response.status, await response.json(content_type=None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("token", "status", "code"), [
    ("", 401, "UNAUTHENTICATED"),
    ("not-a-token", 401, "UNAUTHENTICATED"),
])
async def test_a_request_without_the_attempts_token_is_refused(endpoint: Endpoint, token: str, status: int,
                                                               code: str) -> None:
    got = await _call(endpoint, "POST", "/api/2.0/mlflow/runs/log-metric", token=token,
                      json={"run_id": RUN_ID, "key": "loss", "value": 1.0, "timestamp": 1, "step": 0})
    assert got[0] == status and got[1]["error_code"] == code and got[1]["message"]
    assert endpoint.records.read_text() == ""


@pytest.mark.timeout(60)
async def test_one_run_cannot_write_into_another(endpoint: Endpoint, tmp_path: Path) -> None:
    other_records = tmp_path / "other.jsonl"
    other_records.touch()
    (tmp_path / "other").mkdir()
    other_token = new_token()
    endpoint.server.register(other_token, run_id="01hzzzzzzzotherrun", experiment=EXPERIMENT,
                             records=other_records, staging=tmp_path / "other")
    body = {"run_id": "01hzzzzzzzotherrun", "key": "loss", "value": 1.0, "timestamp": 1, "step": 0}
    status, answer = await _call(endpoint, "POST", "/api/2.0/mlflow/runs/log-metric", json=body)
    assert (status, answer["error_code"]) == (403, "PERMISSION_DENIED")
    status, answer = await _call(endpoint, "GET", "/api/2.0/mlflow/runs/get", params={"run_id": "01hzzzzzzzotherrun"})
    assert (status, answer["error_code"]) == (403, "PERMISSION_DENIED")
    status, answer = await _call(endpoint, "PUT",
                                 f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/01hzzzzzzzotherrun/artifacts/x",
                                 data=b"x")
    assert (status, answer["error_code"]) == (403, "PERMISSION_DENIED")
    # a child may only be created under the attempt's run or its own children
    status, answer = await _call(endpoint, "POST", "/api/2.0/mlflow/runs/create", json={
        "experiment_id": EXPERIMENT, "tags": [{"key": "mlflow.parentRunId", "value": "01hzzzzzzzotherrun"}]})
    assert (status, answer["error_code"]) == (403, "PERMISSION_DENIED")
    assert endpoint.records.read_text() == "" and other_records.read_text() == ""
    assert os.listdir(tmp_path / "other") == []
    # a forgotten token is refused
    endpoint.server.forget(other_token)
    got = await _call(endpoint, "POST", "/api/2.0/mlflow/runs/log-metric", token=other_token, json=body)
    assert got[0] == 401 and got[1]["error_code"] == "UNAUTHENTICATED"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [
    ("POST", "/api/2.0/mlflow/runs/search", {"json": {}}, 501, "NOT_IMPLEMENTED"),
    ("POST", "/api/2.0/mlflow/registered-models/create", {"json": {"name": "m"}}, 501, "NOT_IMPLEMENTED"),
    ("POST", "/api/2.0/mlflow/runs/delete-tag", {"json": {"run_id": RUN_ID, "key": "k"}}, 501, "NOT_IMPLEMENTED"),
    ("GET", "/nowhere", {}, 404, "ENDPOINT_NOT_FOUND"),
    ("GET", "/api/2.0/mlflow/runs/log-metric", {}, 405, "BAD_REQUEST"),
    ("POST", "/api/2.0/mlflow/experiments/create", {"json": {"name": "../x"}}, 400, "INVALID_PARAMETER_VALUE"),
    ("GET", "/api/2.0/mlflow/experiments/get-by-name", {"params": {"experiment_name": "no such"}}, 404,
     "RESOURCE_DOES_NOT_EXIST"),
    ("POST", "/api/2.0/mlflow/runs/create", {"json": {"experiment_id": "elsewhere"}}, 400, "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/log-metric", {"data": b"{not json"}, 400, "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/log-metric", {"json": [1, 2]}, 400, "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/log-metric",
     {"json": {"run_id": RUN_ID, "key": "loss", "value": "high", "timestamp": 1, "step": 0}}, 400,
     "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/log-metric",
     {"json": {"run_id": RUN_ID, "key": "loss", "value": 1.0, "timestamp": 1, "step": 1.5}}, 400,
     "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/log-parameter",
     {"json": {"run_id": RUN_ID, "key": "k" * 251, "value": "v"}}, 400, "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/log-parameter",
     {"json": {"run_id": RUN_ID, "key": "../etc", "value": "v"}}, 400, "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/log-parameter",
     {"json": {"run_id": RUN_ID, "key": "k", "value": "v" * 6001}}, 400, "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/set-tag",
     {"json": {"run_id": RUN_ID, "key": "k", "value": "v" * 8001}}, 400, "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/log-batch", {"json": {"run_id": RUN_ID, "metrics": "all"}}, 400,
     "INVALID_PARAMETER_VALUE"),
    ("POST", "/api/2.0/mlflow/runs/log-batch", {"data": io.BytesIO(b"{" + b" " * (5 << 20) + b"}")}, 413,
     "INVALID_PARAMETER_VALUE"),
    ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/{RUN_ID}/artifacts/../x", {"data": b"x"}, 400,
     "INVALID_PARAMETER_VALUE"),
    ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/{RUN_ID}/artifacts/a%00b", {"data": b"x"}, 400,
     "INVALID_PARAMETER_VALUE"),
    ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/{RUN_ID}/artifacts//etc/x", {"data": b"x"}, 400,
     "INVALID_PARAMETER_VALUE"),
    ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/{RUN_ID}/artifacts/big", {"data": io.BytesIO(b"x" * (2 << 20))},
     413, "INVALID_PARAMETER_VALUE"),
])
async def test_unsupported_or_malformed_requests_get_mlflows_error_format(
        endpoint: Endpoint, method: str, path: str, kwargs: dict[str, Any], status: int, code: str) -> None:
    got_status, answer = await _call(endpoint, method, path, **kwargs)
    assert (got_status, answer["error_code"]) == (status, code), answer
    assert isinstance(answer["message"], str) and answer["message"] and "\n" not in answer["message"]
    assert endpoint.records.read_text() == ""
    staged = [p for p in endpoint.staging.rglob("*") if p.is_file()]
    assert all(p.stat().st_size == 0 for p in staged)


@pytest.mark.timeout(60)
async def test_a_param_keeps_its_first_value_and_a_terminal_update_of_the_run_itself_writes_nothing(
        endpoint: Endpoint) -> None:
    path = "/api/2.0/mlflow/runs/log-parameter"
    assert (await _call(endpoint, "POST", path, json={"run_id": RUN_ID, "key": "lr", "value": "0.1"}))[0] == 200
    assert (await _call(endpoint, "POST", path, json={"run_id": RUN_ID, "key": "lr", "value": "0.1"}))[0] == 200
    status, answer = await _call(endpoint, "POST", path, json={"run_id": RUN_ID, "key": "lr", "value": "0.2"})
    assert (status, answer["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    status, answer = await _call(endpoint, "POST", "/api/2.0/mlflow/runs/update",
                                 json={"run_id": RUN_ID, "status": "FINISHED", "end_time": 5000})
    assert status == 200 and answer["run_info"]["run_id"] == RUN_ID
    assert [line.get("params") for line in endpoint.lines()] == [{"lr": "0.1"}, {"lr": "0.1"}]
    # NaN and infinities, as protobuf's JSON writes them, are recorded as the SDK records them
    status, _ = await _call(endpoint, "POST", "/api/2.0/mlflow/runs/log-batch", json={"run_id": RUN_ID, "metrics": [
        {"key": "x", "value": "NaN", "timestamp": "7000", "step": "1"},
        {"key": "x", "value": "-Infinity", "timestamp": 7000, "step": 2}]})
    assert status == 200
    assert endpoint.records.read_text().splitlines()[-1] == (
        '{"ts":7.0,"k":["x","x"],"v":[NaN,-Infinity],"s":[1,2]}')


def test_a_run_gets_the_endpoint_its_token_run_and_experiment_and_nothing_overrides_them(tmp_path: Path) -> None:
    user = RunUser(os.geteuid(), os.getegid(), "me", "/usr/bin/setpriv")
    asg = pb.Assignment(run_id=RUN_ID, attempt=1, experiment=EXPERIMENT, spec=pb.RunSpec(environment={
        "MLFLOW_TRACKING_URI": "http://elsewhere:5000", "MLFLOW_RUN_ID": "someone-else"}))
    env = run_environment(asg, dirs=AttemptDirs(tmp_path / "r-1"), user=user, sdk_dir=tmp_path / "sdk",
                          python_bin="", tracking_uri="http://127.0.0.1:4321", tracking_token="tok",
                          extra={"MLFLOW_TRACKING_TOKEN": "the agent's"})
    assert {k: v for k, v in env.items() if k.startswith("MLFLOW_")} == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:4321", "MLFLOW_TRACKING_TOKEN": "tok", "MLFLOW_RUN_ID": RUN_ID,
        "MLFLOW_EXPERIMENT_NAME": EXPERIMENT, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    without = run_environment(asg, dirs=AttemptDirs(tmp_path / "r-1"), user=user, sdk_dir=tmp_path / "sdk",
                              python_bin="")
    assert "MLFLOW_TRACKING_TOKEN" not in without


def test_artifacts_count_against_the_outputs_limit_and_never_replace_an_output(tmp_path: Path) -> None:
    outputs, staging = tmp_path / "outputs", tmp_path / "artifacts"
    (staging / RUN_ID).mkdir(parents=True)
    (staging / "01hzzzzzzzchildrun").mkdir()
    outputs.mkdir()
    (outputs / "model.txt").write_text("the run's own")
    (staging / RUN_ID / "model.txt").write_text("an artifact")
    (staging / RUN_ID / "plot.txt").write_text("p" * 10)
    (staging / "01hzzzzzzzchildrun" / "c.txt").write_text("c")
    sources = artifact_sources(staging, RUN_ID)
    assert sources == [(staging / RUN_ID, ""), (staging / "01hzzzzzzzchildrun", "runs/01hzzzzzzzchildrun/")]
    archive = tmp_path / "outputs.zip"
    over = zip_outputs(outputs, archive, max_bytes=30, extra=sources)
    assert over.over_limit and not over.sha256 and not archive.exists()
    zipped = zip_outputs(outputs, archive, max_bytes=1000, extra=sources)
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["model.txt", "plot.txt", "runs/01hzzzzzzzchildrun/c.txt"]
        assert zf.read("model.txt") == b"the run's own"
    assert zipped.files == 3
    # no outputs directory at all: the artifacts still make the archive
    assert zip_outputs(tmp_path / "missing", archive, max_bytes=1000, extra=sources).files == 3


@pytest.mark.timeout(60)
async def test_an_artifact_round_trips_and_lists_and_a_link_in_the_staging_dir_is_not_followed(
        endpoint: Endpoint, tmp_path: Path) -> None:
    base = f"/api/2.0/mlflow-artifacts/artifacts/{EXPERIMENT}/{RUN_ID}/artifacts"
    assert (await _call(endpoint, "PUT", base + "/d/a.bin", data=b"\x00\x01"))[0] == 200
    async with aiohttp.ClientSession() as session:
        async with session.get(endpoint.server.uri + base + "/d/a.bin",
                               headers={"Authorization": f"Bearer {endpoint.token}"}) as response:
            assert (response.status, await response.read()) == (200, b"\x00\x01")
    status, listing = await _call(endpoint, "GET", ARTIFACTS_ROOT, params={"path": f"{EXPERIMENT}/{RUN_ID}/artifacts"})
    assert (status, listing) == (200, {"files": [{"path": "d", "is_dir": True}]})
    secret = tmp_path / "secret"
    secret.write_text("the agent's")
    (endpoint.staging / RUN_ID / "link").symlink_to(tmp_path)
    status, answer = await _call(endpoint, "PUT", base + "/link/secret", data=b"overwritten")
    assert (status, answer["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    status, answer = await _call(endpoint, "GET", base + "/link/secret")
    assert (status, answer["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert secret.read_text() == "the agent's"


@pytest.mark.timeout(60)
async def test_an_experiments_id_is_its_name_under_both_prefixes(endpoint: Endpoint) -> None:
    for prefix in ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow"):
        status, answer = await _call(endpoint, "GET", prefix + "/experiments/get-by-name",
                                     params={"experiment_name": EXPERIMENT})
        assert status == 200 and answer["experiment"]["experiment_id"] == EXPERIMENT
        status, answer = await _call(endpoint, "POST", prefix + "/experiments/create", json={"name": "other.exp"})
        assert (status, answer) == (200, {"experiment_id": "other.exp"})
        status, answer = await _call(endpoint, "GET", prefix + "/runs/get", params={"run_id": RUN_ID})
        assert status == 200 and answer["run"]["info"]["status"] == "RUNNING"


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:x", ":0", "127.0.0.1:70000"])
def test_a_malformed_tracking_listen_is_one_line_naming_the_key(listen: str) -> None:
    with pytest.raises(UsageError) as caught:
        AgentConfig(tracking_listen=listen)
    assert "tracking_listen" in str(caught.value) and "\n" not in str(caught.value)
