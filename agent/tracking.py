"""The MLflow tracking REST API, served by the agent to its runs on loopback: unchanged `mlflow` scripts log
into their Runyard run.

One aiohttp server per agent (`tracking_listen`, default 127.0.0.1 on a free port). Every attempt gets a random
token (`MLFLOW_TRACKING_TOKEN`, sent as `Authorization: Bearer ...`) that maps to that attempt only: a request
without a known token is UNAUTHENTICATED, one naming a run that is neither the attempt's run nor a child run it
created through this endpoint is PERMISSION_DENIED, so one run cannot write into another. The token is forgotten
when the attempt ends (before its outputs are zipped).

Served, under `/api/2.0/mlflow/` and `/ajax-api/2.0/mlflow/`: experiments/get-by-name, experiments/create and
experiments/get (an experiment's id IS its name in Runyard; any valid name exists), runs/get, runs/create,
runs/update, runs/log-metric, runs/log-parameter, runs/set-tag, runs/log-batch, runs/log-inputs (accepted and
dropped: Runyard records no datasets), metrics/get-history (what this endpoint saw of the attempt's runs);
runs/delete-tag is refused (NOT_IMPLEMENTED: tags are kept). The artifact proxy
`/api/2.0/mlflow-artifacts/artifacts/<experiment>/<run>/artifacts/<path>` takes PUT (upload), GET (download)
and GET without a path with `?path=` (list). Anything else under an MLflow API prefix is NOT_IMPLEMENTED (501),
any other path ENDPOINT_NOT_FOUND (404); malformed JSON or a wrong type is INVALID_PARAMETER_VALUE (400). Every
error is MLflow's `{"error_code": ..., "message": ...}` with the status MLflow gives that code.

Writes go through the SDK's exactly-once path: each accepted call appends whole lines in the SDK's record format
(`runyard/sdk.py`) to the attempt's records file with one `os.write` on an O_APPEND descriptor opened without
following links, before the call is answered; the agent's `RecordTail` ships them like the SDK's own lines. A
metric keeps its own timestamp as its line's `ts` (one line per distinct timestamp of a batch). `runs/create`
makes a tracked child run (a `child` line, then its tags); a terminal `runs/update` of a child writes its `end`
line; of the attempt's own run it writes nothing, its state comes from its process. Artifacts are staged in the
attempt's `artifacts/` directory, which only the agent can write (`rundirs.py`), one directory per run, every
step opened relative to its parent without following links; `artifact_sources` tells the upload where they go
in the outputs archive. What each attempt remembers (children, params, tags, latest metrics, metric history,
staged bytes) is bounded.

Must not: read or write anything of an attempt but its records file and its staging directory, follow a link,
answer 200 before the lines are written, or let a request of one attempt reach another's state.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from runyard.descriptors import DIR_FLAGS, open_below
from runyard.ids import new_run_id
from runyard.mlflowwire import error_json, metric_json

log = logging.getLogger(__name__)

API_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")
ARTIFACTS_ROOT = "/api/2.0/mlflow-artifacts/artifacts"
MAX_BODY_BYTES = 4 << 20               # a log-batch of 1000 metrics is well below this
MAX_KEY_CHARS = 250                    # MLflow's limits
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS_TAGS = 100
MAX_CHILDREN = 1000                    # child runs one attempt may create here
MAX_ENTRIES_PER_RUN = 10_000           # params + tags + latest metrics remembered per run
MAX_HISTORY_POINTS = 200_000           # metric points remembered per attempt for get-history
MAX_ARTIFACT_PATH_CHARS = 1024
MAX_ARTIFACT_DEPTH = 32
TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED"})
STATUSES = frozenset({"RUNNING", "SCHEDULED", *TERMINAL})
_NAME = re.compile(r"[\w\-. /]+")
_EXPERIMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RUN_ID = re.compile(r"[A-Za-z0-9][\w\-]{0,255}")
_CHUNK_BYTES = 256 << 10
_STEP_MIN, _STEP_MAX = -(2**63), 2**63 - 1
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def new_token() -> str:
    """A fresh per-attempt token for `MLFLOW_TRACKING_TOKEN`."""
    return secrets.token_urlsafe(32)


class _Problem(Exception):
    """An MLflow error answer: HTTP status, error code, one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> web.Response:
        return web.json_response(error_json(self.code, self.message), status=self.status)


def _invalid(message: str) -> _Problem:
    return _Problem(400, "INVALID_PARAMETER_VALUE", message)


@dataclass(slots=True)
class _Run:
    """A run as this endpoint knows it: the attempt's own, or a child run it created."""

    id: str
    name: str
    parent: str                      # '' for the attempt's run
    start_ms: int
    status: str = "RUNNING"
    end_ms: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    latest: dict[str, tuple[float, int, int]] = field(default_factory=dict)   # key -> (value, ts ms, step)

    def entries(self) -> int:
        return len(self.params) + len(self.tags) + len(self.latest)


@dataclass(slots=True, eq=False)
class _Tracked:
    """One attempt's view: its runs, where its lines and artifacts go, what it logged (bounded)."""

    run_id: str
    experiment: str
    records: Path
    staging: Path
    max_artifact_bytes: int
    runs: dict[str, _Run] = field(default_factory=dict)
    history: dict[tuple[str, str], list[tuple[float, int, int]]] = field(default_factory=dict)
    history_points: int = 0
    artifact_bytes: int = 0
    fd: int | None = None

    def append(self, lines: list[dict[str, Any]]) -> None:
        """Write `lines` with one `os.write` of whole lines (O_APPEND, no link followed); OSError if it fails."""
        if not lines:
            return
        data = "".join(json.dumps(line, allow_nan=True, separators=(",", ":")) + "\n" for line in lines).encode()
        if self.fd is None:
            fd = os.open(self.records, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.EINVAL, "the records file is not a regular file")
            self.fd = fd
        written = os.write(self.fd, data)
        while written < len(data):     # a regular file takes it whole; a short write finishes the line at least
            written += os.write(self.fd, data[written:])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remember_point(self, run: _Run, key: str, value: float, ts_ms: int, step: int) -> None:
        latest = run.latest.get(key)
        if latest is None and run.entries() >= MAX_ENTRIES_PER_RUN:
            return
        if latest is None or (step, ts_ms) >= (latest[2], latest[1]):
            run.latest[key] = (value, ts_ms, step)
        if self.history_points < MAX_HISTORY_POINTS:
            self.history.setdefault((run.id, key), []).append((value, ts_ms, step))
            self.history_points += 1


Handler = Callable[["TrackingServer", _Tracked, dict[str, Any]], dict[str, Any]]


class TrackingServer:
    """The agent's MLflow endpoint. `start()` binds it, `close()` stops it; `register`/`forget` an attempt's token.

    Contract: `register` before the attempt's process starts, `forget` once it has ended (idempotent).
    """

    def __init__(self, listen: str, *, max_artifact_bytes: int) -> None:
        host, _, port = listen.rpartition(":")
        self._host, self._port = host or "127.0.0.1", int(port)
        self._max_artifact_bytes = max_artifact_bytes
        self._tracked: dict[str, _Tracked] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def uri(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; OSError when the address cannot be had."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=False)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("mlflow tracking endpoint listening", extra={"uri": self.uri})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for tracked in self._tracked.values():
            tracked.close()
        self._tracked.clear()

    def register(self, token: str, *, run_id: str, experiment: str, records: Path, staging: Path,
                 start_s: float | None = None) -> None:
        """Let `token` log into `run_id` (appending to `records`, staging artifacts in `staging`)."""
        tracked = _Tracked(run_id, experiment, records, staging, self._max_artifact_bytes)
        start_ms = int((time.time() if start_s is None else start_s) * 1000)
        tracked.runs[run_id] = _Run(run_id, run_id, "", start_ms)
        self._tracked[token] = tracked

    def forget(self, token: str) -> None:
        tracked = self._tracked.pop(token, None)
        if tracked is not None:
            tracked.close()

    # --- dispatch ------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            tracked = self._authenticate(request)
            path = request.path
            if path == ARTIFACTS_ROOT or path.startswith(ARTIFACTS_ROOT + "/"):
                return await self._artifacts(tracked, request, path[len(ARTIFACTS_ROOT):].lstrip("/"))
            name = next((path[len(p):] for p in API_PREFIXES if path.startswith(p)), None)
            if name is None:
                raise _Problem(404, "ENDPOINT_NOT_FOUND",
                               f"{path[:200]} is not an MLflow API path; this endpoint serves {API_PREFIXES[0]}...")
            route = _ROUTES.get(name)
            if route is None:
                raise _Problem(501, "NOT_IMPLEMENTED",
                               f"{name[:200]} is not served inside a Runyard run; it serves logging "
                               f"({', '.join(sorted(_ROUTES))})")
            method, handler = route
            if request.method != method:
                raise _Problem(405, "BAD_REQUEST", f"{name} takes {method}, not {request.method[:20]}")
            body = await _json_body(request) if method == "POST" else _query(request)
            return web.json_response(handler(self, tracked, body))
        except _Problem as problem:
            return problem.response()
        except OSError as err:
            log.warning("mlflow request could not be written", extra={"path": request.path[:200], "error": str(err)})
            return _Problem(503, "TEMPORARILY_UNAVAILABLE",
                            f"the agent could not record this: {err.strerror or err}").response()
        except Exception:       # a bug here: the run's request fails, the agent and its other runs go on
            log.exception("mlflow request failed", extra={"path": request.path[:200]})
            return _Problem(500, "INTERNAL_ERROR", "the agent failed to handle this request").response()

    def _authenticate(self, request: web.Request) -> _Tracked:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Problem(401, "UNAUTHENTICATED",
                           "no token: inside a Runyard run, MLFLOW_TRACKING_TOKEN must be the run's own")
        tracked = self._tracked.get(token.strip())
        if tracked is None:
            raise _Problem(401, "UNAUTHENTICATED", "unknown token: it is not the token of a live run of this node")
        return tracked

    # --- experiments ---------------------------------------------------------------------------------------

    def _get_experiment_by_name(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        return {"experiment": _experiment(_experiment_name(body, "experiment_name"))}

    def _create_experiment(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        return {"experiment_id": _experiment_name(body, "name", missing=_invalid)}

    def _get_experiment(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        return {"experiment": _experiment(_experiment_name(body, "experiment_id"))}

    # --- runs ----------------------------------------------------------------------------------------------

    def _get_run(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        return {"run": _run_json(tracked, _run_of(tracked, body))}

    def _create_run(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        experiment = _text(body, "experiment_id", default=tracked.experiment) or tracked.experiment
        if experiment != tracked.experiment:
            raise _invalid(f"child runs of run {tracked.run_id} are in its experiment {tracked.experiment!r}, "
                           f"not {experiment[:100]!r}")
        tags = _tag_list(body.get("tags", []), "tags")
        parent_id = tags.pop("mlflow.parentRunId", "") or tracked.run_id
        parent = tracked.runs.get(parent_id)
        if parent is None:
            raise _Problem(403, "PERMISSION_DENIED", f"parent run {parent_id[:100]} is not run {tracked.run_id} "
                                                     "or one of its child runs")
        name = _text(body, "run_name", default="") or tags.get("mlflow.runName", "")
        tags.pop("mlflow.runName", None)
        if len(tracked.runs) > MAX_CHILDREN:
            raise _invalid(f"run {tracked.run_id} already has {MAX_CHILDREN} child runs made through MLflow")
        start_ms = _integer(body, "start_time", default=int(time.time() * 1000))
        child = _Run(new_run_id(), "", parent.id, start_ms)
        child.name = name or child.id
        announce: dict[str, Any] = {"ts": start_ms / 1000, "child": {"id": child.id, "name": child.name}}
        if parent.parent:
            announce["run"] = parent.id
        lines = [announce] + ([{"ts": start_ms / 1000, "run": child.id, "tags": tags}] if tags else [])
        tracked.append(lines)
        child.tags.update(tags)
        tracked.runs[child.id] = child
        return {"run": _run_json(tracked, child)}

    def _update_run(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        run = _run_of(tracked, body)
        status = _text(body, "status", default="")
        if status and status not in STATUSES:
            raise _invalid(f"status must be one of {', '.join(sorted(STATUSES))}, not {status[:40]!r}")
        end_ms = _integer(body, "end_time", default=int(time.time() * 1000))
        if status in TERMINAL and run.parent and run.status not in TERMINAL:
            tracked.append([{"ts": end_ms / 1000, "run": run.id, "end": status}])
            run.status, run.end_ms = status, end_ms
        elif status in TERMINAL and not run.parent:
            run.end_ms = end_ms       # nothing is written: the run's state comes from its process
        return {"run_info": _run_info(tracked, run)}

    def _log_metric(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        run = _run_of(tracked, body)
        point = _metric(body)
        _write_batch(tracked, run, [point], {}, {})
        return {}

    def _log_param(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        run = _run_of(tracked, body)
        key, value = _key(body, "key", "param"), _value(body, "value", MAX_PARAM_CHARS, "param")
        _write_batch(tracked, run, [], {key: value}, {})
        return {}

    def _set_tag(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        run = _run_of(tracked, body)
        key, value = _key(body, "key", "tag"), _value(body, "value", MAX_TAG_CHARS, "tag")
        _write_batch(tracked, run, [], {}, {key: value})
        return {}

    def _delete_tag(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        _run_of(tracked, body)
        raise _Problem(501, "NOT_IMPLEMENTED", "Runyard keeps a run's tags: set the tag to another value instead")

    def _log_batch(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        run = _run_of(tracked, body)
        metrics = _list(body.get("metrics", []), "metrics")
        params = _list(body.get("params", []), "params")
        tags = _list(body.get("tags", []), "tags")
        if len(metrics) > MAX_BATCH_METRICS or len(params) + len(tags) > MAX_BATCH_PARAMS_TAGS:
            raise _invalid(f"a batch holds at most {MAX_BATCH_METRICS} metrics and {MAX_BATCH_PARAMS_TAGS} "
                           "params and tags together")
        points = [_metric(_object(item, "metrics[]")) for item in metrics]
        param_map: dict[str, str] = {}
        for item in params:
            item = _object(item, "params[]")
            key, value = _key(item, "key", "param"), _value(item, "value", MAX_PARAM_CHARS, "param")
            if param_map.get(key, value) != value:
                raise _invalid(f"param {key!r} is given two values in one batch")
            param_map[key] = value
        _write_batch(tracked, run, points, param_map, _tag_list(tags, "tags"))
        return {}

    def _log_inputs(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        _run_of(tracked, body)
        return {}       # Runyard records no datasets or model inputs: accepted and dropped

    def _get_history(self, tracked: _Tracked, body: dict[str, Any]) -> dict[str, Any]:
        run = _run_of(tracked, body)
        key = _key(body, "metric_key", "metric")
        points = tracked.history.get((run.id, key), [])
        return {"metrics": [metric_json(key, v, ts, s) for v, ts, s in points]}

    # --- artifacts -----------------------------------------------------------------------------------------

    async def _artifacts(self, tracked: _Tracked, request: web.Request, tail: str) -> web.StreamResponse:
        if not tail:
            if request.method != "GET":
                raise _Problem(405, "BAD_REQUEST", f"{ARTIFACTS_ROOT} takes GET ?path=...")
            run_id, rel = _artifact_place(tracked, request.query.get("path", ""))
            files = await asyncio.to_thread(_list_staged, tracked.staging / run_id, rel)
            return web.json_response({"files": files})
        run_id, rel = _artifact_place(tracked, tail)
        if not rel:
            raise _invalid("an artifact path names a file below <experiment>/<run>/artifacts/")
        if request.method == "PUT":
            await self._upload(tracked, request, run_id, rel)
            return web.json_response({})
        if request.method == "GET":
            return await _download(request, tracked.staging / run_id, rel)
        raise _Problem(501, "NOT_IMPLEMENTED", f"{request.method[:20]} of an artifact is not served in a Runyard run")

    async def _upload(self, tracked: _Tracked, request: web.Request, run_id: str, rel: str) -> None:
        fd, old_bytes = await asyncio.to_thread(_open_staged_for_write, tracked.staging / run_id, rel)
        tracked.artifact_bytes -= old_bytes
        written, complete = 0, False
        try:
            async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
                if tracked.artifact_bytes + written + len(chunk) > tracked.max_artifact_bytes:
                    raise _Problem(413, "INVALID_PARAMETER_VALUE",
                                   f"artifacts of run {tracked.run_id} would pass the outputs limit of "
                                   f"{tracked.max_artifact_bytes} bytes")
                await asyncio.to_thread(_write_all, fd, chunk)
                written += len(chunk)
            complete = True
        finally:
            if not complete:
                os.ftruncate(fd, 0)      # a half upload is not an artifact
            os.close(fd)
            tracked.artifact_bytes += written if complete else 0


# --- request parsing ---------------------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _Problem(413, "INVALID_PARAMETER_VALUE", f"request body over {MAX_BODY_BYTES} bytes") from None
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise _invalid("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object")
    return body


def _query(request: web.Request) -> dict[str, Any]:
    return {key: request.query.getone(key) for key in request.query}


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(f"{what} must be a list")
    return value


def _text(body: dict[str, Any], name: str, *, default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None:
        raise _invalid(f"missing value for required parameter {name!r}")
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    return value


def _integer(body: dict[str, Any], name: str, *, default: int) -> int:
    value = body.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,20}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not _STEP_MIN <= value <= _STEP_MAX:
        raise _invalid(f"{name} must be a 64-bit integer")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, str):
        if value in _NON_FINITE:
            return _NON_FINITE[value]
        try:
            return float(value.strip()) if len(value) < 400 else float("x")
        except ValueError:
            raise _invalid(f"{name} must be a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(f"{name} must be a number")
    try:
        return float(value)
    except OverflowError:
        raise _invalid(f"{name} is too large") from None


def _key(body: dict[str, Any], name: str, kind: str) -> str:
    key = _text(body, name)
    if not key:
        raise _invalid(f"{kind} name must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise _invalid(f"{kind} name {key[:40]!r}... is {len(key)} characters long; the limit is {MAX_KEY_CHARS}")
    if not _NAME.fullmatch(key) or key.startswith("/") or any(s in ("", ".", "..") for s in key.split("/")):
        raise _invalid(f"invalid {kind} name {key!r}: use letters, digits, '_', '-', '.', ' ' and '/' (not "
                       "leading, not empty, '.' or '..' segments)")
    return key


def _value(body: dict[str, Any], name: str, limit: int, kind: str) -> str:
    value = _text(body, name, default="")
    if len(value) > limit:
        raise _invalid(f"{kind} value is {len(value)} characters long; the limit is {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"{kind} value is not valid Unicode") from None
    return value


def _tag_list(items: Any, what: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in _list(items, what):
        item = _object(item, f"{what}[]")
        tags[_key(item, "key", "tag")] = _value(item, "value", MAX_TAG_CHARS, "tag")
    return tags


def _metric(body: dict[str, Any]) -> tuple[str, float, int, int]:
    """(key, value, timestamp ms, step) of a LogMetric request or a batch's Metric."""
    key = _key(body, "key", "metric")
    if "value" not in body:
        raise _invalid(f"metric {key!r} has no value")
    value = _number(body["value"], f"metric {key!r} value")
    return key, value, _integer(body, "timestamp", default=int(time.time() * 1000)), _integer(body, "step", default=0)


def _experiment_name(body: dict[str, Any], name: str,
                     missing: Callable[[str], _Problem] = lambda text: _Problem(404, "RESOURCE_DOES_NOT_EXIST", text),
                     ) -> str:
    """A valid experiment name (every one exists in Runyard); `missing` makes the error for an invalid one."""
    experiment = _text(body, name)
    if len(experiment) > 500 or not _EXPERIMENT.fullmatch(experiment):
        raise missing(f"no experiment {experiment[:100]!r}: Runyard experiment names are letters, digits, '_', "
                      "'.' and '-', starting with a letter or digit")
    return experiment


def _run_of(tracked: _Tracked, body: dict[str, Any]) -> _Run:
    run_id = body.get("run_id") or body.get("run_uuid")
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise _invalid("run_id must be a run id")
    run = tracked.runs.get(run_id)
    if run is None:
        raise _Problem(403, "PERMISSION_DENIED", f"run {run_id} is not run {tracked.run_id} or one of the child "
                                                 "runs it created: a run may only log into itself")
    return run


# --- writing and answering ---------------------------------------------------------------------------------


def _write_batch(tracked: _Tracked, run: _Run, points: list[tuple[str, float, int, int]],
                 params: dict[str, str], tags: dict[str, str]) -> None:
    """Append the lines of one call (one per distinct metric timestamp; params and tags on the first), then
    remember what they said."""
    for name, text in params.items():
        if run.params.get(name, text) != text:
            raise _invalid(f"param {name!r} of run {run.id} was logged as {run.params[name][:100]!r}; a param's "
                           f"value cannot change (tried {text[:100]!r})")
    where = {"run": run.id} if run.parent else {}
    lines: list[dict[str, Any]] = []
    by_ts: dict[int, tuple[list[str], list[float], list[int]]] = {}
    for key, value, ts_ms, step in points:
        keys, values, steps = by_ts.setdefault(ts_ms, ([], [], []))
        keys.append(key)
        values.append(value)
        steps.append(step)
    for ts_ms, (keys, values, steps) in by_ts.items():
        lines.append({"ts": ts_ms / 1000, **where, "k": keys, "v": values, "s": steps})
    if params or tags:
        extra = {**({"params": params} if params else {}), **({"tags": tags} if tags else {})}
        if lines:
            lines[0].update(extra)
        else:
            lines.append({"ts": time.time(), **where, **extra})
    tracked.append(lines)
    for key, value, ts_ms, step in points:
        tracked.remember_point(run, key, value, ts_ms, step)
    for target, items in ((run.params, params), (run.tags, tags)):
        for key, text in items.items():
            if key in target or run.entries() < MAX_ENTRIES_PER_RUN:
                target[key] = text


def _experiment(name: str) -> dict[str, Any]:
    return {"experiment_id": name, "name": name, "artifact_location": f"mlflow-artifacts:/{name}",
            "lifecycle_stage": "active"}


def _run_info(tracked: _Tracked, run: _Run) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_id": run.id, "run_uuid": run.id, "run_name": run.name, "experiment_id": tracked.experiment,
        "user_id": "", "status": run.status, "start_time": run.start_ms, "lifecycle_stage": "active",
        "artifact_uri": f"mlflow-artifacts:/{tracked.experiment}/{run.id}/artifacts",
    }
    if run.end_ms is not None and run.status in TERMINAL:
        info["end_time"] = run.end_ms
    return info


def _run_json(tracked: _Tracked, run: _Run) -> dict[str, Any]:
    tags = dict(run.tags)
    tags.setdefault("mlflow.runName", run.name)
    if run.parent:
        tags["mlflow.parentRunId"] = run.parent
    return {
        "info": _run_info(tracked, run),
        "data": {
            "metrics": [metric_json(k, v, ts, s) for k, (v, ts, s) in run.latest.items()],
            "params": [{"key": k, "value": v} for k, v in run.params.items()],
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        },
        "inputs": {},
    }


# --- the staging directory ---------------------------------------------------------------------------------


def _artifact_place(tracked: _Tracked, path: str) -> tuple[str, str]:
    """(run id, relative path) of `<experiment>/<run>/artifacts[/<rel>]`, refusing anything else."""
    if "\x00" in path or path.startswith("/") or len(path) > MAX_ARTIFACT_PATH_CHARS:
        raise _invalid("an artifact path must be relative, without NUL, at most "
                       f"{MAX_ARTIFACT_PATH_CHARS} characters")
    parts = path.strip("/").split("/")
    if len(parts) < 3 or parts[2] != "artifacts":
        raise _invalid(f"artifact path {path[:200]!r} is not <experiment>/<run id>/artifacts/<path>")
    experiment, run_id, rel = parts[0], parts[1], parts[3:]
    if experiment != tracked.experiment or run_id not in tracked.runs:
        raise _Problem(403, "PERMISSION_DENIED", f"{experiment[:100]}/{run_id[:100]} is not run {tracked.run_id} "
                                                 "or one of the child runs it created")
    if any(part in ("", ".", "..") for part in rel) or len(rel) > MAX_ARTIFACT_DEPTH:
        raise _invalid(f"artifact path {path[:200]!r} has an empty, '.' or '..' part, or is too deep")
    return run_id, "/".join(rel)


def _open_dir(top: Path, parts: list[str], *, create: bool) -> int:
    """A descriptor of `top/parts...`, never following a link; directories made 0700 when `create`."""
    parent = os.open(top.parent, DIR_FLAGS)
    try:
        return open_below(parent, [top.name, *parts], create=create)
    finally:
        os.close(parent)


def _open_staged_for_write(run_dir: Path, rel: str) -> tuple[int, int]:
    """An empty file at `run_dir/rel` to write (its old size, which it no longer counts)."""
    *parents, name = rel.split("/")
    try:
        directory = _open_dir(run_dir, parents, create=True)
    except OSError as err:
        raise _invalid(f"artifact path {rel[:200]!r} cannot be a directory: {err.strerror}") from None
    try:
        try:
            old = os.stat(name, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise _invalid(f"artifact path {rel[:200]!r} is a directory")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=directory)
        return fd, old.st_size if old is not None else 0
    finally:
        os.close(directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _open_staged_for_read(run_dir: Path, rel: str) -> int | None:
    """A descriptor of the staged regular file `run_dir/rel`, or None when there is none."""
    *parents, name = rel.split("/")
    try:
        directory = _open_dir(run_dir, parents, create=False)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return None
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


async def _download(request: web.Request, run_dir: Path, rel: str) -> web.StreamResponse:
    """Stream a staged artifact in chunks (an artifact may be as large as the outputs limit)."""
    fd = await asyncio.to_thread(_open_staged_for_read, run_dir, rel)
    if fd is None:
        raise _Problem(404, "RESOURCE_DOES_NOT_EXIST", f"no artifact {rel[:200]} in run {run_dir.name}")
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = os.fstat(fd).st_size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(os.read, fd, _CHUNK_BYTES):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        os.close(fd)


def _list_staged(run_dir: Path, rel: str) -> list[dict[str, Any]]:
    try:
        directory = _open_dir(run_dir, rel.split("/") if rel else [], create=False)
    except OSError:
        return []           # no such directory, or a file: MLflow lists nothing for either
    try:
        with os.scandir(directory) as entries:
            found = sorted((e.name, e.stat(follow_symlinks=False)) for e in entries)
    finally:
        os.close(directory)
    files: list[dict[str, Any]] = []
    for name, st in found:
        path = f"{rel}/{name}" if rel else name
        if stat.S_ISDIR(st.st_mode):
            files.append({"path": path.rsplit("/", 1)[-1], "is_dir": True})
        elif stat.S_ISREG(st.st_mode):
            files.append({"path": path.rsplit("/", 1)[-1], "is_dir": False, "file_size": st.st_size})
    return files


def artifact_sources(staging: Path, run_id: str) -> list[tuple[Path, str]]:
    """Where the staged artifacts go in the outputs archive: (directory, prefix) for each run that has some:
    the attempt's run at the top (first), a child run under `runs/<child id>/`. Blocking."""
    try:
        names = sorted(os.listdir(staging), key=lambda name: (name != run_id, name))
    except FileNotFoundError:
        return []
    return [(staging / name, "" if name == run_id else f"runs/{name}/") for name in names]


_ROUTES: dict[str, tuple[str, Handler]] = {
    "experiments/get-by-name": ("GET", TrackingServer._get_experiment_by_name),
    "experiments/create": ("POST", TrackingServer._create_experiment),
    "experiments/get": ("GET", TrackingServer._get_experiment),
    "runs/get": ("GET", TrackingServer._get_run),
    "runs/create": ("POST", TrackingServer._create_run),
    "runs/update": ("POST", TrackingServer._update_run),
    "runs/log-metric": ("POST", TrackingServer._log_metric),
    "runs/log-parameter": ("POST", TrackingServer._log_param),
    "runs/set-tag": ("POST", TrackingServer._set_tag),
    "runs/delete-tag": ("POST", TrackingServer._delete_tag),
    "runs/log-batch": ("POST", TrackingServer._log_batch),
    "runs/log-inputs": ("POST", TrackingServer._log_inputs),
    "metrics/get-history": ("GET", TrackingServer._get_history),
}
