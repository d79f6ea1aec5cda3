"""The head's MLflow read API: what `mlflow.search_runs`, `MlflowClient.get_run` / `get_metric_history` and
`mlflow.artifacts.download_artifacts` ask a tracking server, answered from the head's store over HTTPS.

Served by aiohttp in the head's process (`app.py` starts and stops it) on `mlflow_listen`, with the certificate
of the client port. Every request carries a user's token (`Authorization: Bearer`, MLflow's
`MLFLOW_TRACKING_TOKEN`), checked by the same `auth.Credentials` as gRPC: viewer and up may read, and the caller
sees its own workspace only (another workspace's run is as missing as a run that never was).
Mapping: an experiment's id is its name; a run's id is the Runyard id; states read as MLflow statuses
(`mlflow_search.STATUS`); times are milliseconds; tags are the run's plus `mlflow.runName`, `mlflow.user` and
`mlflow.parentRunId`; metrics are the latest point per key. Artifacts are the files of the run's outputs archive
(`mlflow-artifacts:/<experiment>/<run>/artifacts/<path>`); a child run without outputs of its own finds its files
in the first ancestor's that has some, under `runs/<child id>/`.
Writes are refused in MLflow's error format (runs log as they run; `runyard submit` starts them), unknown
endpoints are ENDPOINT_NOT_FOUND, a bad filter is INVALID_PARAMETER_VALUE; a caller's mistake is never a 500.
Must not: write to the store, parse filters itself (`mlflow_search`), or know about gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import ssl
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from runyard.mlflowwire import error_json, metric_json
from runyard.monitoring import start_site
from scheduler import mlflow_search as search
from scheduler.artifacts import ArtifactStore
from scheduler.auth import Credentials, Rule
from scheduler.errors import HeadError, NotFound, PermissionDenied, Unauthenticated
from scheduler.model import Principal, Role, RunRecord
from scheduler.store import Store

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_HISTORY_PAGE = 25_000           # MLflow's GET_METRIC_HISTORY_MAX_RESULTS: its client pages by this many
MAX_BULK_RUNS = 100
MAX_SEARCH_EXPERIMENTS = 1_000
MAX_BULK_POINTS = 2_500             # per run (MLflow's own cap for the bulk interval read)
DEFAULT_BULK_POINTS = 320
MAX_LISTED_FILES = 10_000
CHUNK_BYTES = 1024 * 1024
_READ = Rule(Role.VIEWER)
_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")
_ARTIFACTS = ("/api/2.0/mlflow-artifacts/artifacts", "/ajax-api/2.0/mlflow-artifacts/artifacts")
_SERVER_INFO = ("/api/3.0/mlflow/server-info", "/ajax-api/3.0/mlflow/server-info")
_WRITES = {
    "experiments/create", "experiments/delete", "experiments/restore", "experiments/update",
    "experiments/set-experiment-tag", "experiments/delete-experiment-tag", "runs/create", "runs/update",
    "runs/delete", "runs/restore", "runs/log-metric", "runs/log-parameter", "runs/set-tag", "runs/delete-tag",
    "runs/log-batch", "runs/log-model", "runs/log-inputs", "runs/outputs",
}
READ_ONLY = ("this head serves MLflow's read API only: runs log their own metrics, params, tags and outputs as "
             "they run, and `runyard submit` starts them")


class ApiError(Exception):
    """An answer in MLflow's error format."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def _missing(message: str) -> ApiError:
    return ApiError(404, "RESOURCE_DOES_NOT_EXIST", message)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def artifact_uri(run: RunRecord) -> str:
    return f"mlflow-artifacts:/{run.experiment}/{run.id}/artifacts"


def run_tags(run: RunRecord) -> dict[str, str]:
    tags = dict(run.tags)
    tags["mlflow.runName"] = run.display_name
    tags["mlflow.user"] = run.submitter
    if run.parent_id:
        tags["mlflow.parentRunId"] = run.parent_id
    return tags


def run_json(run: RunRecord, metrics: list[Any], params: dict[str, str]) -> dict[str, Any]:
    """A run as MLflow's `Run` message, in JSON."""
    info: dict[str, Any] = {
        "run_id": run.id, "run_uuid": run.id, "run_name": run.display_name, "experiment_id": run.experiment,
        "user_id": run.submitter, "status": search.STATUS.get(run.state.value, "RUNNING"),
        "start_time": _ms(run.started_at if run.started_at is not None else run.created_at),
        "artifact_uri": artifact_uri(run), "lifecycle_stage": "active",
    }
    if run.ended_at is not None:
        info["end_time"] = _ms(run.ended_at)
    return {
        "info": info,
        "data": {
            "metrics": [metric_json(p.key, p.value, _ms(p.ts), p.step) for p in metrics],
            "params": [{"key": k, "value": v} for k, v in sorted(params.items())],
            "tags": [{"key": k, "value": v} for k, v in sorted(run_tags(run).items())],
        },
        "inputs": {},
    }


def _safe_path(path: str) -> str:
    """A relative artifact path, normalized; `..`, absolute paths and NULs refused."""
    if "\x00" in path or "\\" in path:
        raise _invalid(f"Invalid path: {path[:200]!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _invalid(f"Invalid path: {path[:200]!r}")
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class _Files:
    """Where a run's artifacts are: an outputs archive and the folder in it that is the run's root."""
    sha256: str
    prefix: str             # "" or "runs/<child id>/"


def _list_zip(handle: IO[bytes], root: str) -> list[dict[str, Any]]:
    """The files and folders directly under `root` (ending with '/', or "") of a zip."""
    with zipfile.ZipFile(handle) as archive:
        files: dict[str, dict[str, Any]] = {}
        for info in archive.infolist():
            name = info.filename
            if not name.startswith(root) or name == root:
                continue
            head, sep, _ = name[len(root):].partition("/")
            if not head:
                continue
            if sep:
                files.setdefault(head, {"path": head, "is_dir": True})
            else:
                files[head] = {"path": head, "is_dir": False, "file_size": info.file_size}
            if len(files) >= MAX_LISTED_FILES:
                break
        return sorted(files.values(), key=lambda f: f["path"])


class MlflowApi:
    def __init__(self, *, store: Store, artifacts: ArtifactStore, credentials: Credentials) -> None:
        self._store = store
        self._artifacts = artifacts
        self._credentials = credentials
        self._reads: dict[str, Callable[[Principal, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "experiments/search": self.search_experiments,
            "experiments/get": self.get_experiment,
            "experiments/get-by-name": self.get_experiment_by_name,
            "runs/search": self.search_runs,
            "runs/get": self.get_run,
            "metrics/get-history": self.metric_history,
            "metrics/get-history-bulk-interval": self.metric_history_bulk,
            "artifacts/list": self.list_artifacts,
        }

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # --- the boundary --------------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            who = self._authenticate(request)
            return await self._route(who, request)
        except ApiError as err:
            return self._error(err)
        except (Unauthenticated, PermissionDenied, NotFound) as err:
            status, code = {Unauthenticated: (401, "UNAUTHENTICATED"), PermissionDenied: (403, "PERMISSION_DENIED"),
                            NotFound: (404, "RESOURCE_DOES_NOT_EXIST")}[type(err)]
            return self._error(ApiError(status, code, str(err)))
        except search.SearchError as err:
            return self._error(_invalid(str(err)))
        except HeadError as err:
            return self._error(ApiError(400, "BAD_REQUEST", str(err)))
        except web.HTTPException as err:        # aiohttp's own refusals: a body over the cap (413), ...
            return self._error(ApiError(err.status, "BAD_REQUEST", err.reason))
        except ConnectionResetError:
            raise
        except Exception:
            log.exception("MLflow API request failed", extra={"path": request.path[:200]})
            return self._error(ApiError(500, "INTERNAL_ERROR", "the head failed to answer; its log says why"))

    def _error(self, err: ApiError) -> web.Response:
        if err.status in (401, 403):
            log.warning("refused MLflow API call", extra={"why": err.message})
        return web.json_response(error_json(err.code, err.message), status=err.status)

    def _authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
        if not token:
            raise Unauthenticated("no token: set MLFLOW_TRACKING_TOKEN to a Runyard token (`runyard mlflow-env`)")
        return self._credentials.check(_READ, token, None)

    async def _route(self, who: Principal, request: web.Request) -> web.StreamResponse:
        path = request.path
        for root in _ARTIFACTS:
            if path == root or path.startswith(root + "/"):
                if request.method not in ("GET", "HEAD"):
                    raise ApiError(403, "PERMISSION_DENIED", READ_ONLY)
                if path == root:
                    return web.json_response(await self.artifact_listing(who, request.query.get("path", "")))
                return await self.download(who, request, path[len(root) + 1:])
        if path in _SERVER_INFO and request.method == "GET":
            return web.json_response({"store_type": "SqlStore", "workspaces_enabled": False,
                                      "multipart_uploads_enabled": False, "multipart_downloads_enabled": False})
        name = next((path[len(p):].strip("/") for p in _PREFIXES if path.startswith(p)), None)
        if name is not None and name in _WRITES:
            raise ApiError(403, "PERMISSION_DENIED", READ_ONLY)
        read = self._reads.get(name or "")
        wanted = "POST" if name in ("runs/search", "experiments/search") else "GET"
        if read is None or request.method not in (wanted, "GET"):
            raise ApiError(404, "ENDPOINT_NOT_FOUND", f"no endpoint {request.method} {path[:200]} on this head")
        return web.json_response(await read(who, await self._arguments(request)))

    async def _arguments(self, request: web.Request) -> dict[str, Any]:
        """The request's fields: the JSON body of a POST, the query of a GET (repeated keys as lists)."""
        if request.method == "POST":
            try:
                body = await request.json() if request.can_read_body else {}
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "MALFORMED_REQUEST", "the request body is not JSON") from None
            if not isinstance(body, dict):
                raise ApiError(400, "MALFORMED_REQUEST", "the request body must be a JSON object")
            return body
        found: dict[str, Any] = {}
        for key in request.query:
            values = request.query.getall(key)
            found[key] = values if len(values) > 1 or key in ("run_ids", "experiment_ids", "order_by") else values[0]
        return found

    # --- experiments ---------------------------------------------------------------------------------------------

    @staticmethod
    def _experiment_json(experiment: Any) -> dict[str, Any]:
        return {"experiment_id": experiment.name, "name": experiment.name,
                "artifact_location": f"mlflow-artifacts:/{experiment.name}", "lifecycle_stage": "active",
                "creation_time": _ms(experiment.created_at), "last_update_time": _ms(experiment.last_update),
                "tags": []}

    async def _experiment(self, who: Principal, name: object, what: str) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise _invalid(f"Missing value for required parameter '{what}'.")
        found = await self._store.experiment(who.workspace, name)
        if found is None:
            raise _missing(f"Could not find experiment with {'ID' if what == 'experiment_id' else 'name'} "
                           f"{search_shown(name)}")
        return {"experiment": self._experiment_json(found)}

    async def get_experiment(self, who: Principal, args: dict[str, Any]) -> dict[str, Any]:
        return await self._experiment(who, args.get("experiment_id"), "experiment_id")

    async def get_experiment_by_name(self, who: Principal, args: dict[str, Any]) -> dict[str, Any]:
        return await self._experiment(who, args.get("experiment_name"), "experiment_name")

    async def search_experiments(self, who: Principal, args: dict[str, Any]) -> dict[str, Any]:
        limit = search.max_results(args.get("max_results"))
        offset = search.page_offset(args.get("page_token"))
        view = str(args.get("view_type", "ACTIVE_ONLY") or "ACTIVE_ONLY")
        if view in ("DELETED_ONLY", "2"):
            return {"experiments": []}
        where, values = search.compile_experiments(search.parse_experiment_filter(str(args.get("filter") or "")))
        found = await self._store.search_experiments(who.workspace, where, values, limit=limit + 1, offset=offset)
        answer: dict[str, Any] = {"experiments": [self._experiment_json(e) for e in found[:limit]]}
        if len(found) > limit:
            answer["next_page_token"] = search.page_token(offset + limit)
        return answer

    # --- runs ----------------------------------------------------------------------------------------------------

    async def _runs_json(self, runs: list[RunRecord]) -> list[dict[str, Any]]:
        ids = [r.id for r in runs]
        metrics = await self._store.latest_metrics(ids)
        params = await self._store.params_of(ids)
        return [run_json(r, metrics.get(r.id, []), params.get(r.id, {})) for r in runs]

    async def _run(self, who: Principal, run_id: object) -> RunRecord:
        if not isinstance(run_id, str) or not run_id:
            raise _invalid("Missing value for required parameter 'run_id'.")
        try:
            return await self._store.get_run(run_id, who.workspace)
        except NotFound:
            raise _missing(f"Run with id={search_shown(run_id)} not found") from None

    async def get_run(self, who: Principal, args: dict[str, Any]) -> dict[str, Any]:
        run = await self._run(who, args.get("run_id") or args.get("run_uuid"))
        return {"run": (await self._runs_json([run]))[0]}

    async def search_runs(self, who: Principal, args: dict[str, Any]) -> dict[str, Any]:
        experiments = args.get("experiment_ids") or []
        if isinstance(experiments, str):
            experiments = [experiments]
        if not isinstance(experiments, list) or not all(isinstance(e, str) for e in experiments):
            raise _invalid("experiment_ids must be a list of experiment ids")
        if len(experiments) > MAX_SEARCH_EXPERIMENTS:
            raise _invalid(f"at most {MAX_SEARCH_EXPERIMENTS} experiment_ids per search, not {len(experiments)}")
        limit = search.max_results(args.get("max_results"))
        offset = search.page_offset(args.get("page_token"))
        order_by = args.get("order_by") or []
        if isinstance(order_by, str):
            order_by = [order_by]
        if not isinstance(order_by, list) or len(order_by) > 20:
            raise _invalid("order_by must be a list of at most 20 clauses")
        view = str(args.get("run_view_type", "ACTIVE_ONLY") or "ACTIVE_ONLY")
        if view in ("DELETED_ONLY", "2"):
            return {"runs": []}
        query = search.compile_runs(search.parse_filter(str(args.get("filter") or "")),
                                    [search.parse_order_by(str(o)) for o in order_by])
        runs = await self._store.search_runs(who.workspace, experiments, query.where, query.args, query.order,
                                             query.order_args, limit=limit + 1, offset=offset)
        answer: dict[str, Any] = {"runs": await self._runs_json(runs[:limit])}
        if len(runs) > limit:
            answer["next_page_token"] = search.page_token(offset + limit)
        return answer

    # --- metrics -------------------------------------------------------------------------------------------------

    async def metric_history(self, who: Principal, args: dict[str, Any]) -> dict[str, Any]:
        run = await self._run(who, args.get("run_id") or args.get("run_uuid"))
        key = args.get("metric_key")
        if not isinstance(key, str) or not key:
            raise _invalid("Missing value for required parameter 'metric_key'.")
        limit = search.max_results(args.get("max_results"), default=MAX_HISTORY_PAGE, cap=MAX_HISTORY_PAGE)
        after = search.cursor(args.get("page_token"), 4)
        points = await self._store.metric_history(run.id, key, after=after, limit=limit + 1)
        answer: dict[str, Any] = {"metrics": [
            metric_json(key, p.value, _ms(p.ts), p.step) for p in points[:limit]]}
        if len(points) > limit:
            last = points[limit - 1]
            answer["next_page_token"] = search.cursor_token([last.step, last.ts, last.attempt, last.seq])
        return answer

    async def metric_history_bulk(self, who: Principal, args: dict[str, Any]) -> dict[str, Any]:
        run_ids = args.get("run_ids") or []
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if not run_ids or not isinstance(run_ids, list):
            raise _invalid("Missing value for required parameter 'run_ids'.")
        if len(run_ids) > MAX_BULK_RUNS:
            raise _invalid(f"GetMetricHistoryBulkInterval request must specify at most {MAX_BULK_RUNS} run_ids. "
                           f"Received {len(run_ids)} run_ids.")
        key = args.get("metric_key")
        if not isinstance(key, str) or not key:
            raise _invalid("Missing value for required parameter 'metric_key'.")
        per_run = search.max_results(args.get("max_results"), default=DEFAULT_BULK_POINTS, cap=MAX_BULK_POINTS)
        start, end = (self._step(args, "start_step"), self._step(args, "end_step"))
        if start is not None and end is not None and start > end:
            raise _invalid("end_step must be greater than start_step. ")
        found: list[dict[str, Any]] = []
        for run_id in sorted(set(run_ids)):
            run = await self._run(who, run_id)
            steps = await self._store.metric_steps(run.id, key, start, end)
            chosen = sample_steps(steps, per_run)
            for p in await self._store.metric_points_at(run.id, key, chosen):
                found.append({**metric_json(key, p.value, _ms(p.ts), p.step), "run_id": run.id})
        return {"metrics": found}

    @staticmethod
    def _step(args: dict[str, Any], name: str) -> int | None:
        value = args.get(name)
        if value is None or value == "":
            return None
        try:
            return int(str(value))
        except ValueError:
            raise _invalid(f"Invalid value {str(value)[:40]!r} for parameter '{name}' supplied.") from None

    # --- artifacts -----------------------------------------------------------------------------------------------

    async def _files(self, run: RunRecord) -> _Files | None:
        """The archive a run's artifacts are in, walking up to the first ancestor with outputs."""
        current, prefix, seen = run, "", set[str]()
        while not current.outputs_sha256:
            if not current.parent_id or current.parent_id in seen or len(seen) > 64:
                return None
            seen.add(current.id)
            prefix = f"runs/{run.id}/"
            try:
                current = await self._store.get_run(current.parent_id, run.workspace)
            except NotFound:
                return None
        return _Files(current.outputs_sha256, prefix)

    async def _locate(self, who: Principal, path: str) -> tuple[RunRecord, str]:
        """The run and the path inside its artifacts of `<experiment>/<run>/artifacts[/<path>]`."""
        parts = _safe_path(path).split("/")
        if len(parts) < 3 or parts[2] != "artifacts":
            raise _missing(f"no artifacts at {path[:200]!r}: artifact paths are <experiment>/<run id>/artifacts/...")
        run = await self._run(who, parts[1])
        if run.experiment != parts[0]:
            raise _missing(f"Run with id={search_shown(parts[1])} not found")
        return run, "/".join(parts[3:])

    async def _listing(self, run: RunRecord, inner: str) -> list[dict[str, Any]]:
        files = await self._files(run)
        if files is None:
            return []
        root = files.prefix + (inner + "/" if inner else "")

        def read() -> list[dict[str, Any]]:
            with self._artifacts.open("outputs", files.sha256) as handle:
                return _list_zip(handle, root)
        return await asyncio.to_thread(read)

    async def artifact_listing(self, who: Principal, path: str) -> dict[str, Any]:
        """`GET /api/2.0/mlflow-artifacts/artifacts?path=`: names relative to the folder listed."""
        run, inner = await self._locate(who, path)
        return {"files": await self._listing(run, inner)}

    async def list_artifacts(self, who: Principal, args: dict[str, Any]) -> dict[str, Any]:
        """`GET /api/2.0/mlflow/artifacts/list`: paths relative to the run's artifact root."""
        run = await self._run(who, args.get("run_id") or args.get("run_uuid"))
        inner = _safe_path(str(args.get("path") or ""))
        files = await self._listing(run, inner)
        for f in files:
            f["path"] = posixpath.join(inner, f["path"]) if inner else f["path"]
        return {"root_uri": artifact_uri(run), "files": files}

    async def download(self, who: Principal, request: web.Request, path: str) -> web.StreamResponse:
        run, inner = await self._locate(who, path)
        files = await self._files(run)
        if files is None or not inner:
            raise _missing(f"no artifact {inner!r} in run {run.id}")
        member = files.prefix + inner
        handle = await asyncio.to_thread(self._artifacts.open, "outputs", files.sha256)
        try:
            archive = await asyncio.to_thread(zipfile.ZipFile, handle)
            try:
                try:
                    info = archive.getinfo(member)
                except KeyError:
                    raise _missing(f"no artifact {inner!r} in run {run.id}") from None
                if info.is_dir():
                    raise _missing(f"{inner!r} is a folder of run {run.id}, not a file")
                response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                                       "Content-Length": str(info.file_size)})
                await response.prepare(request)
                if request.method == "GET":
                    with archive.open(info) as source:
                        while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
                            await response.write(chunk)
                await response.write_eof()
                return response
            finally:
                archive.close()
        finally:
            handle.close()


def search_shown(text: str) -> str:
    return repr(text) if len(text) <= 80 else f"{text[:80]!r}..."


def sample_steps(steps: list[int], most: int) -> list[int]:
    """At most `most` of the ascending `steps`, evenly spread, always with the first and the last."""
    if len(steps) <= most:
        return steps
    if most == 1:
        return [steps[-1]]
    picked = {steps[round(i * (len(steps) - 1) / (most - 1))] for i in range(most)}
    return sorted(picked)


def server_ssl(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


class MlflowServer:
    """The API on its own listening socket, started and stopped by the head."""

    def __init__(self, api: MlflowApi) -> None:
        self._runner = web.AppRunner(api.application(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        self.url = ""

    async def start(self, address: str, context: ssl.SSLContext | None) -> str:
        """Listen on `address` (host:port, 0 for a free port); returns the URL clients use."""
        self.url = await start_site(self._runner, address, context, "mlflow_listen")
        return self.url

    async def stop(self) -> None:
        await self._runner.cleanup()
