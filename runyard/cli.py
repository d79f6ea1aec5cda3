"""`runyard`: the command line. Each command is a thin shell over `Client`; errors become one line and an exit code.

Exit codes: 0 ok; a run's own exit code for `submit` that waited for it (and `logs -f`); 1 a failed or refused
operation; 2 a usage mistake, click's included, said in the same one line `runyard: ...`; 130 interrupted (for
`submit`, Ctrl-C detaches and the run goes on).

A command imports what it needs in its body (gRPC and the protos to talk to the head, rich to draw a table,
pydantic for `submit`'s job file), and the admin and environment commands are imported only when named
(`LazyGroup`): `runyard runs --help` imports click and no more. Must not: import any of those at module level.
"""

from __future__ import annotations

import math
import os
import shlex
import sys

# gRPC's C core logs a failed TLS handshake at INFO on stderr; the one-line error below says it for people.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# The job file's schema is ours alone: no pydantic plugin observes it, so pydantic need not scan every installed
# package's entry points for one (a third of `submit`'s start-up). Set before any command imports pydantic.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
import importlib
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from runyard.errors import RunyardError, UsageError

if TYPE_CHECKING:
    from protos import runyard_pb2 as pb
    from runyard.client import Client
    from runyard.config import ClientConfig

OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
# The names `logs --stream` takes: render.STREAMS's keys, written out so that parsing the options needs no protos.
STREAM_NAMES = ("build", "stderr", "stdout", "system")


def connect() -> Client:
    from runyard.client import Client
    from runyard.config import load_client_config

    return Client(load_client_config())


class LazyGroup(click.Group):
    """A group whose commands from other modules are imported only when named: `lazy` maps a command's name to
    `module:attribute`. `runyard runs` does not import the admin or environment commands (nor what they import)."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            found = getattr(importlib.import_module(module), attribute)
            if not isinstance(found, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(found, cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        """An unknown command names the closest known one, in the one line every usage error takes."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise click.UsageError(f"no command {name!r}{hint}", ctx)
        return super().resolve_command(ctx, args)


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """`--version` with other arguments (alone, `runyard.__main__` answers it without importing this module)."""
    if value and not ctx.resilient_parsing:
        from runyard.__main__ import version_line

        click.echo(version_line())
        ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
             lazy={"login": "runyard.cli_admin:login", "workspace": "runyard.cli_admin:workspace",
                   "token": "runyard.cli_admin:token", "audit": "runyard.cli_admin:audit",
                   "env": "runyard.cli_env:env", "usage": "runyard.cli_usage:usage"})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and exit.")
def cli() -> None:
    """Runyard: queue, run and follow ML training runs on your own machines."""


# --- cluster -------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--agents", default=2, show_default=True, type=click.IntRange(0, 64), help="local agents to keep running")
@click.option("--max-agents", default=0, type=click.IntRange(0, 64),
              help="let the autoscaler grow to this many agents while runs wait, and shrink back when idle")
@click.option("--idle-time", default=120.0, show_default=True, type=click.FloatRange(0.0),
              help="seconds an extra agent may stay idle before it is stopped")
@click.option("--gpus-per-agent", default=0, show_default=True, type=click.IntRange(0, 16), help="fake GPUs per agent")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="data directory [~/.local/share/runyard/local]")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="head port (0: any free port)")
def up(agents: int, max_agents: int, idle_time: float, gpus_per_agent: int, data_dir: Path | None, port: int) -> None:
    """Run a local cluster (a head and its agents) in the foreground; Ctrl-C stops it."""
    from protos import runyard_pb2 as pb
    from runyard import render
    from runyard.client import Client
    from runyard.cluster import LocalCluster, default_data_dir, run_local_cluster

    def ready_nodes(config: ClientConfig) -> int:
        try:
            with Client(config, timeout_s=2) as client:
                return sum(n.state == pb.NODE_STATE_READY for n in client.nodes().nodes)
        except RunyardError:
            return 0

    if max_agents and max_agents < agents:
        raise UsageError(f"--max-agents {max_agents} is below --agents {agents}")
    cluster = LocalCluster((data_dir or default_data_dir()).resolve(), agents, gpus_per_agent, port, max_agents, idle_time)
    sys.exit(run_local_cluster(cluster, say=lambda text: render.err_console.print(f"[bold]runyard up[/]: {text}"),
                               nodes_ready=ready_nodes))


@cli.command("mlflow-env")
def mlflow_env() -> None:
    """Print the `export` lines that point MLflow's client at the head: eval "$(runyard mlflow-env)"."""
    from runyard.config import load_client_config

    config = load_client_config()
    lines = [("MLFLOW_TRACKING_URI", config.mlflow_tracking_uri()), ("MLFLOW_TRACKING_TOKEN", config.token)]
    if not config.insecure:
        if not config.ca_file:
            raise UsageError("no cluster CA file to give MLflow: `runyard login` again")
        lines.append(("MLFLOW_TRACKING_SERVER_CERT_PATH", config.ca_file))
    for name, value in lines:
        click.echo(f"export {name}={shlex.quote(value)}")


# --- submit --------------------------------------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option("-f", "--file", "job_file", type=click.Path(path_type=Path), help="job file (Azure ML command-job YAML)")
@click.option("-e", "--experiment")
@click.option("-n", "--name", "display_name")
@click.option("-c", "--compute", help="compute cluster")
@click.option("--cpus", type=float)
@click.option("--memory", help="e.g. 8G")
@click.option("--gpus", type=int)
@click.option("--nodes", type=int)
@click.option("--procs-per-node", type=int, help="processes per node of a distributed run")
@click.option("--distribution", metavar="pytorch|mpi", help="how the processes form one job (default with "
              "--procs-per-node: pytorch)")
@click.option("--env", multiple=True, metavar="K=V|NAME[:VERSION]",
              help="a variable KEY=VALUE (repeat it), or the registered environment to run in: NAME:VERSION, "
                   "NAME@latest or NAME")
@click.option("--conda-file", type=click.Path(path_type=Path), help="run in the environment of this conda file")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a job file key, e.g. inputs.lr=0.1")
@click.option("--priority", metavar="low|medium|high", help="queue priority; admins may give an integer")
@click.option("--timeout", type=float, help="seconds")
@click.option("-d", "--detach", is_flag=True, help="return once the run is queued, printing its id on stdout")
@click.option("-q", "--quiet", "--parsable", "quiet", is_flag=True,
              help="print only the run id (and, without -d, the run's own output)")
@click.pass_context
def submit(ctx: click.Context, directory: Path | None, job_file: Path | None, experiment: str | None,
           display_name: str | None, compute: str | None, cpus: float | None, memory: str | None, gpus: int | None,
           nodes: int | None, procs_per_node: int | None, distribution: str | None, env: tuple[str, ...], conda_file: Path | None, sets: tuple[str, ...],
           priority: str | None, timeout: float | None, detach: bool, quiet: bool) -> None:
    """Snapshot DIRECTORY and run a command on the cluster: runyard submit [DIR] [-f job.yml] -- COMMAND..."""
    from runyard.runrequest import CliOptions, plain_request
    from runyard.submit import submit_run

    options = CliOptions(
        directory=directory, job_file=job_file, experiment=experiment, display_name=display_name, compute=compute,
        cpus=cpus, memory=memory, gpus=gpus, nodes=nodes, procs_per_node=procs_per_node,
        distribution=distribution, env=env, conda_file=conda_file, sets=sets,
        priority=priority, timeout_s=timeout,
        command=tuple(ctx.obj or ()),
    )
    request = plain_request(options)
    if request is None:
        from runyard.jobfile import build_request   # pydantic: only for what the job file's model must check
        request = build_request(options)
    with connect() as client:
        sys.exit(submit_run(client, request, detach=detach, quiet=quiet))


# --- runs ----------------------------------------------------------------------------------------------------


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(flag: str, text: str, now: float | None = None) -> float:
    """A time given on the command line, in unix seconds: a duration ago (`30m`, `2h`, `3d`, `1w`, `90s`) or an
    ISO date or date and time (`2026-11-30`, `2026-11-30T14:00`, local time unless it names a zone)."""
    from datetime import datetime

    matched = _DURATION.match(text)
    if matched:
        return (time.time() if now is None else now) - float(matched[1]) * _SECONDS[matched[2].lower()]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give a duration ago (30m, 2h, 3d) or an ISO date or time "
                         "(2026-11-30, 2026-11-30T14:00)") from None


def parse_states(values: Sequence[str]) -> list[pb.RunState]:
    """Run states, any case, each flag repeatable or comma-separated: `--state running,queued --state FAILED`."""
    from runyard import vocabulary

    words = [w for value in values for w in value.split(",") if w.strip()]
    try:
        return list(dict.fromkeys(vocabulary.run_state(w) for w in words))
    except ValueError as err:
        raise UsageError(f"--state: {err}") from None


def parse_tags(values: Sequence[str]) -> list[tuple[str, str | None]]:
    """`--tag k=v` (the tag has this value) and `--tag k` (the run has the tag)."""
    found: list[tuple[str, str | None]] = []
    for value in values:
        key, equals, wanted = value.partition("=")
        if not key.strip():
            raise UsageError(f"--tag {value!r}: give KEY=VALUE, or KEY for runs that have the tag")
        found.append((key.strip(), wanted if equals else None))
    return found


@cli.command()
@click.option("-e", "--experiment", default="", help="only runs of this experiment")
@click.option("--state", "states", multiple=True, metavar="S[,S...]",
              help="only runs in these states (any case; repeat or separate with commas): queued, running, ...")
@click.option("--user", default="", help="only runs this user submitted")
@click.option("--tag", "tags", multiple=True, metavar="K=V|K",
              help="only runs with this tag value, or with the tag at all (repeat: all must match)")
@click.option("--since", default="", metavar="WHEN", help="created since: a duration ago (30m, 2h, 3d) or an ISO "
              "date/time")
@click.option("--until", default="", metavar="WHEN", help="created before: the same forms as --since")
@click.option("--parent", default="", metavar="RUN", help="only the direct children of this run")
@click.option("-c", "--cluster", "compute", default="", help="only runs for this compute cluster")
@click.option("--node", default="", help="only runs whose current or last attempt is on this node")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@OUTPUT
def runs(experiment: str, states: tuple[str, ...], user: str, tags: tuple[str, ...], since: str, until: str,
         parent: str, compute: str, node: str, limit: int, output: str) -> None:
    """List runs, newest first; children under their parent when both are listed."""
    from runyard import render
    from runyard import vocabulary

    now = time.time()
    after = parse_time("--since", since, now) if since else 0.0
    before = parse_time("--until", until, now) if until else 0.0
    if after and before and after >= before:
        raise UsageError(f"--since {since} is not before --until {until}")
    wanted, tag_filters = parse_states(states), parse_tags(tags)
    with connect() as client:
        reply = client.list_runs(experiment=experiment, states=wanted, user=user, limit=limit, tags=tag_filters,
                                 created_after=after, created_before=before, parent=parent, compute=compute,
                                 node=node)
    found = reply.runs
    if reply.truncated:
        render.err_console.print(f"showing the newest {len(found)} runs: the rest of the {limit} asked for did not fit "
                                 "in one page; narrow with -e, --state, --user, --tag or --since", markup=False)
    if output == "json":
        render.print_json([render.as_dict(r) for r in found])
        return
    if not found:
        filtered = experiment or states or user or tags or since or until or parent or compute or node
        render.say("no run matched these filters" if filtered else "no runs yet: `runyard submit DIR -- COMMAND` "
                   "queues one")
        return
    render.print_table(
        ("RUN", "NAME", "EXPERIMENT", "STATE", "EXIT", "NODE", "SUBMITTER", "CREATED", "DURATION"),
        ((branch + r.id, r.display_name, r.experiment, vocabulary.word("RunState", r.state), render.outcome(r),
          r.node, r.submitter, render.when(r.created_at), render.duration(r)) for branch, r in render.run_tree(found)),
    )


@cli.command()
@OUTPUT
def experiments(output: str) -> None:
    """List the experiments of your workspace with their runs per state, the most recently active first."""
    from runyard import render

    with connect() as client:
        found = client.experiments()
    if output == "json":
        render.print_json([render.as_dict(e) for e in found])
        return
    if not found:
        render.err_console.print("no experiments yet: `runyard submit -e NAME` starts one")
        return
    render.print_table(
        ("EXPERIMENT", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELED", "TOTAL", "LAST ACTIVITY"),
        ((e.name, e.queued, e.running, e.completed, e.failed, e.canceled, e.total, render.when(e.last_activity))
         for e in found),
    )


@cli.command()
@click.argument("run_id")
@OUTPUT
def show(run_id: str, output: str) -> None:
    """Show one run: its configuration, state, and the history of its state changes."""
    from protos import runyard_pb2 as pb
    from runyard import priorities
    from runyard import render
    from runyard import vocabulary

    with connect() as client:
        run = client.get_run(run_id)
    if output == "json":
        render.print_json(render.as_dict(run))
        return
    fields: list[tuple[str, Any]] = [
        ("run", run.id), ("name", run.display_name), ("experiment", run.experiment),
        ("submitted by", run.submitter or "-"), ("state", vocabulary.word("RunState", run.state)),
    ]
    if run.state == pb.RUN_STATE_QUEUED:
        fields.append(("pending", run.pending_reason))
    if run.state in vocabulary.TERMINAL:
        fields.append(("exit", render.outcome(run) or "-"))
    fields += [
        ("priority", priorities.name(run.priority)), ("attempt", run.attempt), ("node", run.node), ("command", " ".join(run.spec.argv)),
        ("resources", render.resources(run.spec)), ("compute", run.spec.compute),
        ("environment", render.environment(run)),
        ("timeout", f"{run.spec.timeout_s:g}s" if run.spec.timeout_s else "none"),
        ("snapshot", run.snapshot_sha256[:16]), ("outputs", run.outputs_sha256[:16] or "-"),
        ("created", render.when(run.created_at)), ("duration", render.duration(run)),
    ]
    from runyard.cli_usage import usage_fields

    fields += usage_fields(run)
    fields += [(f"tag {k}", v) for k, v in sorted(run.tags.items())]
    fields += [(f"param {k}", v) for k, v in sorted(run.params.items())]
    fields += [(k, v) for k, v in sorted(run.properties.items())]
    render.print_table(("FIELD", "VALUE"), fields)
    render.print_table(
        ("WHEN", "EVENT", "FROM", "TO", "DETAIL"),
        ((render.when(e.at), e.event, e.from_state, e.to_state, e.detail) for e in run.events),
        title="history",
    )


@cli.command()
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN [RUN...]")
@click.option("-f", "--follow", is_flag=True, help="keep streaming until the run ends")
@click.option("--tail", default=0, type=click.IntRange(0), help="only the last N lines")
@click.option("--rank", type=int, help="only this rank: a distributed run's global process rank (default: 0), "
              "else a multi-node run's node rank")
@click.option("--all-ranks", is_flag=True, help="a distributed run: every rank's lines, each marked [rank R]")
@click.option("--stream", type=click.Choice(STREAM_NAMES),
              help="only this stream: build is the output of building the run's environment")
@click.option("--grep", "pattern", metavar="PATTERN",
              help="search the stored logs of every RUN for lines matching PATTERN (a Python regular expression) "
                   "and print each as RUN LINE")
@click.option("-i", "--ignore-case", is_flag=True, help="with --grep: match regardless of case")
@click.option("--max-matches", default=0, type=click.IntRange(0, 10_000),
              help="with --grep: stop after this many matches [head's default: 1000]")
def logs(run_ids: tuple[str, ...], follow: bool, tail: int, rank: int | None, all_ranks: bool, stream: str | None,
         pattern: str | None, ignore_case: bool, max_matches: int) -> None:
    """Print a run's output (stdout to stdout, stderr, runyard's and the build's lines to stderr); with --grep,
    search the logs of several runs."""
    from protos import runyard_pb2 as pb
    from runyard import render

    wanted = render.STREAMS[stream] if stream else pb.STREAM_UNSPECIFIED
    if pattern is not None:
        if follow or tail or rank is not None or all_ranks:
            raise UsageError("--grep searches every rank of every stored line: without -f, --tail, --rank or "
                             "--all-ranks")
        _grep(run_ids, pattern, ignore_case, wanted, max_matches)
        return
    if ignore_case or max_matches:
        raise UsageError("-i and --max-matches go with --grep PATTERN")
    if len(run_ids) > 1:
        raise UsageError("logs of several runs need --grep PATTERN; without it, name one run")
    if all_ranks and rank is not None:
        raise UsageError("give --rank R or --all-ranks, not both")
    run_id = run_ids[0]
    with connect() as client:
        # a run of several attempts: every line says which attempt wrote it
        writer = render.LogWriter(prefix_rank=all_ranks, prefix_attempt=client.get_run(run_id).attempt > 1)
        try:
            for chunk in client.logs(run_id, follow=follow, tail=tail, rank=rank, all_ranks=all_ranks, stream=wanted):
                writer.prefix_attempt = writer.prefix_attempt or chunk.attempt > 1
                writer.write(chunk)
        except KeyboardInterrupt:
            sys.exit(130)
        if follow:      # the run ended: end as `submit` does, with its exit code
            from runyard.submit import outcome

            sys.exit(outcome(client, run_id, say=render.say))


def _grep(run_ids: Sequence[str], pattern: str, ignore_case: bool, stream: pb.Stream, max_matches: int) -> None:
    from runyard import render
    from runyard.units import plural

    with connect() as client:
        found = client.search_logs(run_ids, pattern, ignore_case=ignore_case, stream=stream, max_matches=max_matches)
    for match in found.matches:
        render.write_match(match)
    if found.stopped:
        render.err_console.print(f"runyard: {found.stopped}", markup=False, soft_wrap=True)
    elif not found.matches:
        render.say(f"no line of {plural(len(run_ids), 'run')} matches {pattern!r} "
                   f"({plural(found.scanned, 'log record')} searched)")


@cli.command()
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN [RUN...]")
@click.option("--key", default="", help="only this metric, as a series; with several runs, the one to compare")
@click.option("--rank", type=int, help="only this rank: a distributed run's global process rank (default: 0), "
              "else a multi-node run's node rank; with several runs, of each")
@click.option("--all-ranks", is_flag=True, help="one multi-node run: every rank's metrics, with a RANK column")
@click.option("--points", type=click.IntRange(min=1), help="at most N points per series: a longer one comes as N "
              "buckets of equal step width, each with its min, max and last value")
@click.option("--system", is_flag=True, help="the samples its agent took of the run's CPU, memory (bytes) and GPUs "
              "(system/... keys) instead of the run's own metrics")
@click.option("-o", "--output", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def metrics(run_ids: tuple[str, ...], key: str, rank: int | None, all_ranks: bool, points: int | None,
            system: bool, output: str) -> None:
    """Show a run's metrics: a summary per key, or the series of one key. With several runs and --key, compare
    that key across them: a row per run."""
    if system and (len(run_ids) > 1 or all_ranks or rank is not None or points):
        raise UsageError("--system shows one run's samples: give one RUN, without --rank, --all-ranks or --points")
    from runyard import render

    if all_ranks and rank is not None:
        raise UsageError("give --rank R or --all-ranks, not both")
    if len(run_ids) > 1:
        if not key:
            raise UsageError("comparing runs needs --key KEY: the metric to compare")
        if all_ranks:
            raise UsageError("--all-ranks shows one run's ranks; compare runs with --rank R (default: rank 0)")
        _compare(run_ids, key, rank, output)
        return
    run_id = run_ids[0]
    with connect() as client:
        found = client.metrics(run_id, key, rank=rank, all_ranks=all_ranks, max_points=points or 0,
                               summaries_only=output == "table" and not key, system=system)
    if key and not found.series:
        render.err_console.print(f"no metric {key!r} in run {run_id}", markup=False)
        if output == "table":
            return
    if output == "json":
        render.print_metrics_json(found)
        return
    ranked = (("rank",) if all_ranks else ())
    buckets = any(s.first_steps for s in found.series)
    extra = ("min", "max", "first_step", "count") if buckets else ()
    if output == "csv":
        render.print_csv(("key", *ranked, "step", "value", "ts", *extra),
                         ((s.key, *((s.rank,) if all_ranks else ()), *point) for s in found.series
                          for point in render.series_rows(s, buckets)))
        return
    if key:
        render.print_table(
            (*(c.upper() for c in ranked), "STEP", "VALUE", "TIME", *(c.replace("_", " ").upper() for c in extra)),
            ((*((s.rank,) if all_ranks else ()), step, f"{value:.6g}", render.when(ts),
              *((f"{more[0]:.6g}", f"{more[1]:.6g}", *more[2:]) if more else ()))
             for s in found.series for step, value, ts, *more in render.series_rows(s, buckets)))
        return
    if not found.summaries and not found.params:
        render.err_console.print(f"run {run_id} has no {'system ' if system else ''}metrics yet")
        return
    render.print_table(
        ("KEY", *(c.upper() for c in ranked), "LAST", "MIN", "MAX", "COUNT", "LAST STEP"),
        ((s.key, *((s.rank,) if all_ranks else ()), *(_metric_value(s.key, v) for v in (s.last, s.min, s.max)),
          s.count, s.last_step) for s in found.summaries),
    )
    if found.params:
        render.print_table(("PARAM", "VALUE"), sorted(found.params.items()))


def _metric_value(key: str, value: float) -> str:
    """A value as a table shows it: a size for a key in bytes (`system/memory_bytes`), else 6 significant digits."""
    if key.endswith("_bytes") and math.isfinite(value) and value >= 0:
        from runyard.units import format_size

        return format_size(int(value))
    return f"{value:.6g}"


def _compare(run_ids: Sequence[str], key: str, rank: int | None, output: str) -> None:
    """One row per run of `key`'s summary, from one GetMetrics call per run; a run without it says so."""
    from runyard import render

    rows: list[tuple[str, pb.MetricSummary]] = []
    with connect() as client:
        for run_id in run_ids:
            run = client.get_run(run_id)
            summaries = client.metrics(run.id, key, rank=rank, summaries_only=True).summaries
            if not summaries:
                render.err_console.print(f"no metric {key!r} in run {run.id}", markup=False)
            rows += [(run.id, s) for s in summaries]
    if output == "json":
        render.print_json([{"run_id": run_id, "key": s.key, "rank": s.rank, "last": s.last, "min": s.min,
                            "max": s.max, "steps": s.count, "last_step": s.last_step} for run_id, s in rows])
        return
    if output == "csv":
        render.print_csv(("run", "key", "last", "min", "max", "steps", "last_step"),
                         ((run_id, s.key, s.last, s.min, s.max, s.count, s.last_step) for run_id, s in rows))
        return
    if rows:
        render.print_table(
            ("RUN", "KEY", "LAST", "MIN", "MAX", "STEPS", "LAST STEP"),
            ((run_id, s.key, f"{s.last:.6g}", f"{s.min:.6g}", f"{s.max:.6g}", s.count, s.last_step)
             for run_id, s in rows),
        )


@cli.command()
@click.argument("run_ids", nargs=-1, required=True)
@OUTPUT
def cancel(run_ids: tuple[str, ...], output: str) -> None:
    """Cancel runs: queued ones at once, running ones are stopped (SIGTERM, grace, SIGKILL)."""
    from protos import runyard_pb2 as pb
    from runyard import render
    from runyard import vocabulary

    with connect() as client:
        found = client.cancel(list(run_ids))
    if output == "json":
        render.print_json([render.as_dict(r) for r in found])
        return
    for run in found:
        state = vocabulary.word("RunState", run.state)
        note = "canceled" if run.state == pb.RUN_STATE_CANCELED else (
            "stopping" if run.state not in vocabulary.TERMINAL else f"already {state}")
        render.console.print(f"{run.id}: {note}")


@cli.command()
@click.argument("run_id")
@click.argument("dest", required=False, type=click.Path(path_type=Path))
@click.option("--outputs", is_flag=True, help="the files the run wrote to ./outputs (the default)")
@click.option("--snapshot", is_flag=True, help="the code the run was submitted with")
def download(run_id: str, dest: Path | None, outputs: bool, snapshot: bool) -> None:
    """Download a run's outputs (default) or snapshot into DEST (a new or empty directory)."""
    if outputs and snapshot:
        raise UsageError("--outputs and --snapshot: give one (one download is one archive)")
    what = "snapshot" if snapshot else "outputs"
    import tempfile

    from protos import runyard_pb2 as pb
    from runyard import render
    from runyard.snapshot import safe_extract
    from runyard.units import format_size

    if dest is not None and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} exists and is not an empty directory; name a new one")
    kind = pb.DownloadRequest.OUTPUTS if what == "outputs" else pb.DownloadRequest.SNAPSHOT
    with connect() as client, tempfile.TemporaryDirectory() as tmp:
        run_id = client.get_run(run_id).id      # the whole id of a prefix, for the default directory's name
        dest = dest or Path(f"{run_id}-{what}")
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise UsageError(f"{dest} exists and is not an empty directory; name a new one")
        archive = Path(tmp) / "download.zip"
        size = client.download(run_id, kind, archive)
        written = safe_extract(archive, dest, max_entries=1_000_000, max_bytes=64 * 1024**3)
    render.err_console.print(f"{what} of {run_id} ({format_size(size)} zipped, {format_size(written)}) -> {dest}")


@cli.command()
@click.argument("name", required=False)
@OUTPUT
def nodes(name: str | None, output: str) -> None:
    """List the cluster's nodes with their capacity and what is allocated on them; with NAME, one node and the
    history of its state and schedule."""
    from runyard import render
    from runyard import vocabulary
    from runyard.units import format_size

    if name:
        _show_node(name, output)
        return
    with connect() as client:
        reply = client.nodes()
    if output == "json":
        render.print_json([render.as_dict(n) for n in reply.nodes])
        return
    render.print_table(
        ("NODE", "CLUSTER", "STATE", "SCHEDULE", "CPUS", "MEMORY", "GPUS", "RUNS"),
        ((n.name, n.cluster, vocabulary.word("NodeState", n.state), render.schedule(n),
          f"{n.allocated.cpus:g}/{n.capacity.cpus:g}",
          f"{format_size(n.allocated.memory_bytes)}/{format_size(n.capacity.memory_bytes)}",
          f"{n.allocated.gpus}/{len(n.capacity.gpus)}", len(n.running)) for n in reply.nodes),
    )
    render.print_events(reply.events)


def _show_node(name: str, output: str) -> None:
    from runyard import render
    from runyard import vocabulary
    from runyard.units import format_size

    with connect() as client:
        found = client.get_node(name)
    if output == "json":
        render.print_json(render.as_dict(found))
        return
    render.print_table(("FIELD", "VALUE"), [
        ("node", found.name), ("cluster", found.cluster), ("state", vocabulary.word("NodeState", found.state)),
        ("schedule", render.schedule(found)), ("last seen", render.when(found.last_seen)),
        ("cpus", f"{found.allocated.cpus:g}/{found.capacity.cpus:g}"),
        ("memory", f"{format_size(found.allocated.memory_bytes)}/{format_size(found.capacity.memory_bytes)}"),
        ("gpus", f"{found.allocated.gpus}/{len(found.capacity.gpus)}"), ("runs", ", ".join(found.running) or "-"),
    ] + [(f"label {k}", v) for k, v in sorted(found.labels.items())])
    render.print_table(
        ("WHEN", "EVENT", "FROM", "TO", "DETAIL"),
        ((render.when(e.at), e.event, e.from_state, e.to_state, e.detail) for e in found.events),
        title="history",
    )


@cli.group(cls=LazyGroup, lazy={"token": "runyard.cli_admin:node_token", "remove": "runyard.cli_admin:node_remove",
                                "approve": "runyard.cli_admin:node_approve"})
def node() -> None:
    """Admin: enroll, approve and remove nodes; take them out of scheduling and back."""


def _schedule(name: str, action: pb.NodeScheduleRequest.Action) -> None:
    from runyard import render

    with connect() as client:
        found = client.set_node_schedule(name, action)
    render.console.print(f"{found.name}: {render.schedule(found)} ({len(found.running)} runs on it)")


@node.command()
@click.argument("name")
def drain(name: str) -> None:
    """No new runs on NAME; the running ones finish."""
    from protos import runyard_pb2 as pb

    _schedule(name, pb.NodeScheduleRequest.DRAIN)


@node.command()
@click.argument("name")
def cordon(name: str) -> None:
    """No new runs on NAME."""
    from protos import runyard_pb2 as pb

    _schedule(name, pb.NodeScheduleRequest.CORDON)


@node.command()
@click.argument("name")
def uncordon(name: str) -> None:
    """NAME takes new runs again."""
    from protos import runyard_pb2 as pb

    _schedule(name, pb.NodeScheduleRequest.UNCORDON)


@cli.command()
@click.option("-c", "--compute", default="", help="only this compute cluster")
@OUTPUT
def queue(compute: str, output: str) -> None:
    """List queued runs in the order they will be considered, each with why it is waiting."""
    from runyard import priorities
    from runyard import render

    with connect() as client:
        reply = client.queue(compute)
    found = reply.runs
    if output == "json":
        render.print_json([render.as_dict(r) for r in found])
        return
    if not found:
        render.console.print("no queued runs" + (f" in cluster {compute}" if compute else ""))
    else:
        render.print_table(
            ("RUN", "NAME", "COMPUTE", "PRIORITY", "RESOURCES", "WAITING BECAUSE"),
            ((r.id, r.display_name, r.spec.compute, priorities.name(r.priority), render.resources(r.spec),
              r.pending_reason) for r in found),
        )
    render.print_events(reply.events)


def usage_line(err: click.UsageError, args: Sequence[str]) -> str:
    """A usage mistake as every other error reads: one line, with the command's --help to see."""
    message = " ".join(err.format_message().split())
    return f"runyard: {message} (see {_command_path(args) if err.ctx is None else err.ctx.command_path} --help)"


def _command_path(args: Sequence[str]) -> str:
    """`runyard node drain` of the arguments, for a mistake click reports without its command's context."""
    path, group = ["runyard"], cli
    for arg in args:
        if arg.startswith("-"):
            continue
        if arg not in group.commands and arg not in group.lazy:
            break
        path.append(arg)
        found = group.commands.get(arg)
        if not isinstance(found, LazyGroup):
            break
        group = found
    return " ".join(path)


def say_error(text: str) -> None:
    """One line on stderr, as written (no markup, no wrapping)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    """Entry point: split off the command after `--`, run, and turn runyard errors into one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if args[:1] == ["submit"] and "--" in args:
        cut = args.index("--")
        args, command = args[:cut], args[cut + 1:]
    try:
        cli.main(args=args, prog_name="runyard", obj=command, standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.NoArgsIsHelpError as err:   # `runyard` or `runyard node` alone: the help it asks for
        err.show()
        sys.exit(err.exit_code)
    except click.UsageError as err:
        say_error(usage_line(err, args))
        sys.exit(2)
    except click.ClickException as err:
        say_error(f"runyard: {' '.join(err.format_message().split())}")
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except RunyardError as err:
        say_error(f"runyard: {err}")
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
