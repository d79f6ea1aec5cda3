"""The CLI's connection to the head: a blocking gRPC client, and the one place gRPC errors become runyard errors."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from protos import runyard_pb2 as pb
from protos import runyard_pb2_grpc as pb_grpc
from runyard import errors
from runyard.config import ClientConfig

T = TypeVar("T")
CHUNK_BYTES = 1024 * 1024
_BY_CODE: dict[grpc.StatusCode, type[errors.HeadError]] = {
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationFailed,
    grpc.StatusCode.PERMISSION_DENIED: errors.AuthenticationFailed,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
}


def translate(err: grpc.RpcError, address: str) -> errors.HeadError:
    code = err.code()
    details = err.details() or code.name
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return errors.AuthenticationFailed(f"authentication failed: {details}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        if "CERTIFICATE_VERIFY_FAILED" in details:
            return errors.Unavailable(
                f"the head at {address} does not present a certificate of the pinned cluster CA; if the cluster "
                f"was set up again, `runyard login {address}` again")
        if "handshake" in details.lower():
            return errors.Unavailable(f"TLS with the head at {address} failed; is it a Runyard head's client port? "
                                      f"({details.rsplit(': ', 1)[-1][:120]})")
        return errors.Unavailable(f"cannot reach the head at {address}; is it running? (`runyard up` starts one)")
    return _BY_CODE.get(code, errors.HeadError)(details)


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def call(self: Client, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except grpc.RpcError as err:
            raise translate(err, self.address) from None
    return call


class Client:
    def __init__(self, config: ClientConfig, *, timeout_s: float = 30.0) -> None:
        self.address = config.address
        self._metadata = (("authorization", f"Bearer {config.token}"),)
        self._timeout_s = timeout_s
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if config.insecure:
            self._channel = grpc.insecure_channel(config.address, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=config.ca_pem)
            self._channel = grpc.secure_channel(config.address, credentials, options=options)
        self._stub = pb_grpc.RunyardStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout: bool = True) -> dict[str, Any]:
        return {"metadata": self._metadata, **({"timeout": self._timeout_s} if timeout else {})}

    @_translated
    def has_snapshot(self, sha256: str) -> bool:
        return self._stub.HasSnapshot(pb.SnapshotRef(sha256=sha256), **self._kw()).present

    @_translated
    def upload_snapshot(self, path: Path, sha256: str, progress: Callable[[int], None] = lambda n: None) -> bool:
        """Upload the zip at `path`; returns True when the head already had it."""
        size = path.stat().st_size

        def chunks() -> Iterator[pb.SnapshotChunk]:
            with open(path, "rb") as f:
                first = True
                while (data := f.read(CHUNK_BYTES)) or first:
                    first = False
                    progress(len(data))
                    yield pb.SnapshotChunk(sha256=sha256, size=size, data=data)

        return self._stub.UploadSnapshot(chunks(), **self._kw(timeout=False)).existed

    @_translated
    def submit(self, request: pb.SubmitRequest) -> pb.SubmitResponse:
        if not request.idempotency_key:
            import uuid

            request.idempotency_key = uuid.uuid4().hex
        return self._stub.Submit(request, **self._kw())

    @_translated
    def get_run(self, run_id: str) -> pb.Run:
        return self._stub.GetRun(pb.RunRef(run_id=run_id), **self._kw())

    @_translated
    def list_runs(self, *, experiment: str = "", state: pb.RunState = pb.RUN_STATE_UNSPECIFIED, user: str = "",
                  limit: int = 50, states: Sequence[pb.RunState] = (), tags: Sequence[tuple[str, str | None]] = (),
                  created_after: float = 0.0, created_before: float = 0.0, parent: str = "", compute: str = "",
                  node: str = "") -> pb.ListRunsResponse:
        """The runs of the caller's workspace that match every filter given, newest first. `tags` are (key,
        value) pairs, value None for "has the tag"; `parent` is a run id or a unique prefix of one."""
        request = pb.ListRunsRequest(
            experiment=experiment, state=state, user=user, limit=limit, states=states,
            tags=[pb.TagFilter(key=k, any_value=v is None, value=v or "") for k, v in tags],
            created_after=created_after, created_before=created_before, parent_run_id=parent, compute=compute,
            node=node)
        return self._stub.ListRuns(request, **self._kw())

    @_translated
    def experiments(self) -> list[pb.Experiment]:
        return list(self._stub.ListExperiments(pb.ListExperimentsRequest(), **self._kw()).experiments)

    @_translated
    def search_logs(self, run_ids: Sequence[str], pattern: str, *, ignore_case: bool = False,
                    stream: pb.Stream = pb.STREAM_UNSPECIFIED, max_matches: int = 0) -> pb.SearchLogsResponse:
        """The lines of the runs' stored logs that match `pattern` (Python `re`), searched on the head within its
        bounds (`stopped` says when they ended the search early)."""
        request = pb.SearchLogsRequest(run_ids=run_ids, pattern=pattern, ignore_case=ignore_case, stream=stream,
                                       max_matches=max_matches)
        return self._stub.SearchLogs(request, **self._kw())

    @_translated
    def queue(self, compute: str = "") -> pb.QueueResponse:
        return self._stub.ListQueue(pb.QueueRequest(compute=compute), **self._kw())

    @_translated
    def cancel(self, run_ids: list[str]) -> list[pb.Run]:
        return list(self._stub.Cancel(pb.CancelRequest(run_ids=run_ids), **self._kw()).runs)

    @_translated
    def logs(self, run_id: str, *, follow: bool = False, tail: int = 0, rank: int | None = None,
             all_ranks: bool = False, stream: pb.Stream = pb.STREAM_UNSPECIFIED) -> Iterator[pb.LogChunk]:
        """The run's log records, in chunks of consecutive records as the head stores them; with `stream`, only
        that stream's (e.g. `pb.BUILD`). A distributed run's are rank 0's unless `rank` or `all_ranks` says
        otherwise."""
        request = pb.LogsRequest(run_id=run_id, follow=follow, tail=tail, has_rank=rank is not None, rank=rank or 0,
                                 all_ranks=all_ranks, stream=stream, packed=True)
        replies = self._stub.StreamLogs(request, **self._kw(timeout=not follow))
        try:
            for response in replies:
                yield from response.chunks
        except grpc.RpcError as err:
            raise translate(err, self.address) from None
        finally:
            replies.cancel()

    @_translated
    def metrics(self, run_id: str, key: str = "", *, rank: int | None = None, all_ranks: bool = False,
                max_points: int = 0, summaries_only: bool = False, system: bool = False) -> pb.MetricsResponse:
        """The run's metrics, each series as columns (`series`), at most `max_points` buckets each when given; a
        multi-node run's are rank 0's unless `rank` or `all_ranks` says otherwise. `system`: instead, the samples
        its agent took of its CPU, memory and GPUs (`system/...` keys)."""
        request = pb.MetricsRequest(run_id=run_id, key=key, has_rank=rank is not None, rank=rank or 0,
                                    all_ranks=all_ranks, max_points=max_points, packed=True,
                                    summaries_only=summaries_only, system=system)
        return self._stub.GetMetrics(request, **self._kw())

    @_translated
    def usage(self, *, since: float = 0.0, until: float = 0.0, workspace: str = "") -> pb.UsageResponse:
        """CPU- and GPU-hours and runs by workspace and user in [since, until) (0: unbounded); the token's
        workspace unless `workspace` names another (admins; "*": every workspace)."""
        return self._stub.GetUsage(pb.UsageRequest(since=since, until=until, workspace=workspace), **self._kw())

    @_translated
    def nodes(self) -> pb.ListNodesResponse:
        return self._stub.ListNodes(pb.ListNodesRequest(), **self._kw())

    @_translated
    def get_node(self, name: str) -> pb.Node:
        return self._stub.GetNode(pb.NodeRef(node=name), **self._kw())

    @_translated
    def set_node_schedule(self, node: str, action: pb.NodeScheduleRequest.Action) -> pb.Node:
        return self._stub.SetNodeSchedule(pb.NodeScheduleRequest(node=node, action=action), **self._kw())

    @_translated
    def download(self, run_id: str, what: pb.DownloadRequest.What, dest: Path) -> int:
        """Write the run's snapshot or outputs zip to `dest`; returns its size."""
        written = 0
        with open(dest, "wb") as f:
            for chunk in self._stub.Download(pb.DownloadRequest(run_id=run_id, what=what), **self._kw(timeout=False)):
                f.write(chunk.data)
                written += len(chunk.data)
        return written

    # --- environments ----------------------------------------------------------------------------------------

    @_translated
    def create_environment(self, environment: pb.Environment) -> pb.Environment:
        return self._stub.CreateEnvironment(environment, **self._kw())

    @_translated
    def list_environments(self) -> list[pb.Environment]:
        return list(self._stub.ListEnvironments(pb.ListEnvironmentsRequest(), **self._kw()).environments)

    @_translated
    def get_environment(self, ref: str) -> pb.Environment:
        return self._stub.GetEnvironment(pb.EnvironmentRef(ref=ref), **self._kw())

    @_translated
    def build_environment(self, ref: str, nodes: list[str]) -> list[str]:
        """Ask nodes to build the environment now; returns the nodes that were asked."""
        return list(self._stub.BuildEnvironment(pb.BuildEnvironmentRequest(ref=ref, nodes=nodes), **self._kw()).nodes)

    # --- identity and administration -------------------------------------------------------------------------

    @_translated
    def whoami(self) -> pb.Identity:
        return self._stub.WhoAmI(pb.WhoAmIRequest(), **self._kw())

    @_translated
    def create_workspace(self, name: str) -> pb.Workspace:
        return self._stub.CreateWorkspace(pb.WorkspaceRef(name=name), **self._kw())

    @_translated
    def list_workspaces(self) -> list[pb.Workspace]:
        return list(self._stub.ListWorkspaces(pb.ListWorkspacesRequest(), **self._kw()).workspaces)

    @_translated
    def create_token(self, request: pb.CreateTokenRequest) -> pb.CreateTokenResponse:
        return self._stub.CreateToken(request, **self._kw())

    @_translated
    def list_tokens(self, workspace: str = "") -> list[pb.Token]:
        return list(self._stub.ListTokens(pb.ListTokensRequest(workspace=workspace), **self._kw()).tokens)

    @_translated
    def revoke_token(self, token_id: str) -> pb.Token:
        return self._stub.RevokeToken(pb.TokenRef(id=token_id), **self._kw())

    @_translated
    def create_join_token(self, uses: int, ttl_s: float) -> pb.CreateJoinTokenResponse:
        return self._stub.CreateJoinToken(pb.CreateJoinTokenRequest(uses=uses, ttl_s=ttl_s), **self._kw())

    @_translated
    def remove_node(self, name: str) -> pb.Node:
        return self._stub.RemoveNode(pb.NodeRef(node=name), **self._kw())

    @_translated
    def approve_node(self, name: str) -> pb.Node:
        return self._stub.ApproveNode(pb.NodeRef(node=name), **self._kw())

    @_translated
    def audit(self, *, since: float = 0.0, user: str = "", limit: int = 100) -> list[pb.AuditEntry]:
        return list(self._stub.ListAudit(pb.AuditRequest(since=since, user=user, limit=limit), **self._kw()).entries)
