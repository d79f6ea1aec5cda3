"""How the CLI shows things: tables for people (rich), JSON and CSV for scripts, log lines as written, runs as the
tree of their parents and children.

rich is imported only when a table or a styled line is drawn: `console` and `err_console` are made on first use,
so a command that prints JSON or a plain line does not pay for it. In `-o json`, integers are JSON numbers (protobuf's
JSON mapping writes 64-bit ones as strings) and keys come in a stable order: fields as the message declares them,
map entries sorted.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from protos import runyard_pb2 as pb
from runyard import vocabulary
from runyard.units import format_size

if TYPE_CHECKING:
    from rich.console import Console

_CONSOLES: dict[str, Console] = {}


def __getattr__(name: str) -> Console:
    """`render.console` (stdout) and `render.err_console` (stderr), made on first use."""
    if name not in ("console", "err_console"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _console(name)


def _console(name: str) -> Console:
    """Piped output is for scripts and logs: never wrap or cut it at 80 columns."""
    if name not in _CONSOLES:
        from rich.console import Console

        stream = sys.stderr if name == "err_console" else sys.stdout
        _CONSOLES[name] = Console(stderr=name == "err_console", highlight=False,
                                  width=None if stream.isatty() else 1000)
    return _CONSOLES[name]


def say(text: str) -> None:
    """A plain line for people on stderr (progress, "nothing matched"), written as is, without rich."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def as_dict(message: Message) -> dict[str, Any]:
    """A message for `-o json`, with states and reasons as words (`"state": "Completed"`), 64-bit integers as
    numbers, and map entries sorted by key."""
    from google.protobuf.json_format import MessageToDict

    shown = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return vocabulary.readable(_numbers(cast(Descriptor, message.DESCRIPTOR), shown))


def _numbers(descriptor: Descriptor, shown: dict[str, Any]) -> dict[str, Any]:
    """`shown` (MessageToDict of a `descriptor` message) with its 64-bit integers, which protobuf's JSON mapping
    writes as strings, back as numbers, and its maps' keys in order; nested messages too."""
    for field in descriptor.fields:
        if field.name not in shown:
            continue
        value = shown[field.name]
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            shown[field.name] = {k: _field_value(value_field, v) for k, v in sorted(value.items())}
        elif isinstance(value, list):
            shown[field.name] = [_field_value(field, v) for v in value]
        else:
            shown[field.name] = _field_value(field, value)
    return shown


def _field_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64 and isinstance(value, str):
        return int(value)
    if field.message_type is not None and isinstance(value, dict):
        return _numbers(field.message_type, value)
    return value


def series_rows(series: pb.MetricSeries, buckets: bool) -> Iterator[tuple[Any, ...]]:
    """A series' points as (step, value, ts) rows; downsampled (`buckets`), each bucket's last point with the
    bucket's min, max, first step and count."""
    if not buckets:
        return zip(series.steps, series.values, series.ts)
    return zip(series.steps, series.values, series.ts, series.mins, series.maxs, series.first_steps, series.counts)


def _number(value: float) -> float | str:
    """A double as `as_dict` shows it: NaN and infinities as the strings protobuf's JSON uses."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def metrics_dict(found: pb.MetricsResponse) -> dict[str, Any]:
    """`metrics -o json`: summaries and params as `as_dict` gives them, and the series' points one dict each
    (`points`, as before series came as columns; integers as numbers like every other integer of `-o json`)."""
    shown = as_dict(pb.MetricsResponse(summaries=found.summaries, params=found.params))
    shown.pop("series", None)       # shown as `points`
    points: list[dict[str, Any]] = []
    for series in found.series:
        if series.first_steps:
            points.extend({"key": series.key, "value": _number(v), "step": s, "ts": t, "rank": series.rank,
                           "min": _number(lo), "max": _number(hi), "first_step": f, "count": n}
                          for s, v, t, lo, hi, f, n in series_rows(series, True))
        else:
            points.extend({"key": series.key, "value": _number(v), "step": s, "ts": t, "rank": series.rank}
                          for s, v, t in zip(series.steps, series.values, series.ts))
    shown["points"] = points
    return shown


def print_json(value: Any) -> None:
    import json     # here and below: a table needs neither json nor csv

    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def print_metrics_json(found: pb.MetricsResponse) -> None:
    """`metrics -o json`: as `print_json(metrics_dict(found))` prints it but each point on a line of its own, written
    by the C encoder (an indented dump of 100k points takes the pure-Python one, several times slower). A point
    holds only numbers, fixed names and a metric key (no braces in one), so "}, {" only ever separates points."""
    import json

    shown = metrics_dict(found)
    points = shown.pop("points")
    text = json.dumps({**shown, "points": []}, indent=2, default=str)
    if points:
        rows = json.dumps(points, default=str)[1:-1].replace("}, {", "},\n    {")
        text = text.replace('"points": []', '"points": [\n    ' + rows + "\n  ]")
    sys.stdout.write(text + "\n")


_NEVER_WRAP = {"RUN", "NODE", "STATE", "CREATED", "WHEN"}


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column in _NEVER_WRAP)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _console("console").print(table)


def print_events(events: Sequence[pb.ClusterEvent]) -> None:
    """The head's latest decisions about nodes (autoscaler, quarantine), under a table."""
    if not events:
        return
    _console("console").print("\n[bold]Recent decisions[/]")
    for e in events:
        stamp = time.strftime("%H:%M:%S", time.localtime(e.at))
        _console("console").print(f"{stamp}  {e.kind:<10}  cluster {e.cluster}: {e.detail}", markup=False, soft_wrap=True)


def print_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    import csv

    writer = csv.writer(sys.stdout)
    writer.writerow(columns)
    writer.writerows(rows)


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def duration(run: pb.Run) -> str:
    if not run.started_at:
        return ""
    seconds = (run.ended_at or time.time()) - run.started_at
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def outcome(run: pb.Run) -> str:
    parts = []
    if run.has_exit_code:
        parts.append(str(run.exit_code))
    if run.reason and run.reason != pb.REASON_EXIT_CODE:
        parts.append(vocabulary.word("Reason", run.reason))
    return " ".join(parts)


def schedule(node: pb.Node) -> str:
    return "drained" if node.drained else vocabulary.word("Schedule", node.schedule)


def resources(spec: pb.RunSpec) -> str:
    """What a run asks for, per node: `1 CPU, 1.0G, 2 GPU (A100)`, with `2 nodes × ` in front for a gang."""
    res = spec.resources
    text = f"{res.cpus:g} CPU, {format_size(res.memory_bytes)}"
    if res.gpus:
        kind = " ".join(filter(None, (res.gpu_model, f"{format_size(res.gpu_memory_bytes)}+" if res.gpu_memory_bytes else "")))
        text += f", {res.gpus} GPU" + (f" ({kind})" if kind else "")
    if res.node_labels:
        text += ", on " + ",".join(f"{k}={v}" for k, v in sorted(res.node_labels.items()))
    return f"{res.instance_count} nodes × {text}" if res.instance_count > 1 else text


def environment(run: pb.Run) -> str:
    """The environment a run asked for: `NAME:VERSION (hash)`, `inline (hash)`, or `-` (the node's own)."""
    if not run.spec.env_hash:
        return "-"
    name = f"{run.env_name}:{run.env_version}" if run.env_name else "inline"
    return f"{name} ({run.spec.env_hash[:12]})"


STREAMS: dict[str, pb.Stream] = {"stdout": pb.STDOUT, "stderr": pb.STDERR, "system": pb.SYSTEM, "build": pb.BUILD}


class LogWriter:
    """Writes log records as the run wrote them, a chunk at a time: stdout to stdout; stderr, runyard's own lines
    and the environment's build to stderr, the last two marked. With `prefix_rank` or `prefix_attempt`, each line
    begins with `[attempt N] [rank R] `. A line the agent cut into several records is written as one line."""

    def __init__(self, *, prefix_rank: bool = False, prefix_attempt: bool = False) -> None:
        self.prefix_rank = prefix_rank
        self.prefix_attempt = prefix_attempt
        self._open: set[tuple[int, int, int]] = set()   # (attempt, rank, stream) whose last line goes on

    def write(self, chunk: pb.LogChunk) -> None:
        key = (chunk.attempt, chunk.rank, chunk.stream)
        going_on = key in self._open
        lead = b""
        if self.prefix_attempt:
            lead += f"[attempt {chunk.attempt}] ".encode()
        if self.prefix_rank:
            lead += f"[rank {chunk.rank}] ".encode()
        marked = lead + (b"[runyard] " if chunk.stream == pb.SYSTEM else b"[build] " if chunk.stream == pb.BUILD
                         else b"")
        gap = lead + b"[runyard] "
        data, parts, offset = chunk.data, [], 0
        for length, flags in zip(chunk.lengths, chunk.flags):
            if not going_on:
                parts.append(gap if flags & 2 else marked)
            parts.append(data[offset:offset + length])
            offset += length
            going_on = bool(flags & 1)
            if not going_on:
                parts.append(b"\n")
        if going_on:
            self._open.add(key)
        else:
            self._open.discard(key)
        out = sys.stdout.buffer if chunk.stream == pb.STDOUT else sys.stderr.buffer
        out.write(b"".join(parts))
        out.flush()


def run_tree(runs: Sequence[pb.Run]) -> Iterator[tuple[str, pb.Run]]:
    """The runs of a page as a tree: each run with the branch drawn before it (`├─ `, `└─ `, and `│  ` for the
    levels above), a child right under its parent when both are on the page, oldest child first. A run whose
    parent is not on the page is a root, in the page's order."""
    on_page = {r.id for r in runs}
    children: dict[str, list[pb.Run]] = {}
    roots = []
    for run in runs:
        if run.parent_run_id and run.parent_run_id in on_page and run.parent_run_id != run.id:
            children.setdefault(run.parent_run_id, []).append(run)
        else:
            roots.append(run)
    for family in children.values():
        family.sort(key=lambda r: (r.created_at, r.id))
    seen: set[str] = set()

    def walk(run: pb.Run, lead: str, branch: str) -> Iterator[tuple[str, pb.Run]]:
        seen.add(run.id)
        yield lead + branch, run
        below = [c for c in children.get(run.id, ()) if c.id not in seen]
        inner = lead + ("" if not branch else "   " if branch == "└─ " else "│  ")
        for i, child in enumerate(below):
            yield from walk(child, inner, "└─ " if i == len(below) - 1 else "├─ ")

    for root in roots:
        yield from walk(root, "", "")


def write_match(match: pb.LogMatch) -> None:
    """One line `logs --grep` found: `RUN  line`, or `RUN [rank R] line` for a distributed or multi-node run."""
    where = f"{match.run_id} [rank {match.rank}] " if match.ranked else f"{match.run_id}  "
    sys.stdout.buffer.write(f"{where}{match.line}\n".encode("utf-8", errors="replace"))
    sys.stdout.buffer.flush()
