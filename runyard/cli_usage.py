"""`runyard usage` (CPU- and GPU-hours by workspace and user, as Slurm's `sreport`), and the lines of a run's
use of its node that `runyard show` prints: the peak and mean of its agent's samples.
Must not: talk to the head but through `Client`, or import `scheduler` or `agent`."""

from __future__ import annotations

import time
from typing import Any

import click

from protos import runyard_pb2 as pb
from runyard import render
from runyard.errors import UsageError
from runyard.units import format_size
from runyard.usagekeys import CPU_PERCENT, GPU_MEMORY_SUFFIX, GPU_PREFIX, GPU_UTIL_SUFFIX, MEMORY, MEMORY_PEAK



def usage_fields(run: pb.Run) -> list[tuple[str, str]]:
    """`show`'s lines for the run's CPU, memory and each GPU: peak and mean of its agent's samples; none before
    the first sample."""
    by_key = {u.key: u for u in run.usage}
    fields: list[tuple[str, str]] = []
    if CPU_PERCENT in by_key:
        cpu = by_key[CPU_PERCENT]
        fields.append(("cpu", f"peak {cpu.peak:.0f}%, mean {cpu.mean:.0f}% (100% = one CPU busy)"))
    if MEMORY in by_key:
        peak = max(by_key[MEMORY].peak, by_key[MEMORY_PEAK].peak if MEMORY_PEAK in by_key else 0.0)
        fields.append(("memory", f"peak {format_size(int(peak))}, mean {format_size(int(by_key[MEMORY].mean))}"))
    for key in sorted(k for k in by_key if k.startswith(GPU_PREFIX) and k.endswith(GPU_UTIL_SUFFIX)):
        index = key[len(GPU_PREFIX):].split("_", 1)[0]
        util = by_key[key]
        line = f"peak {util.peak:.0f}%, mean {util.mean:.0f}%"
        memory = by_key.get(f"{GPU_PREFIX}{index}{GPU_MEMORY_SUFFIX}")
        if memory is not None:
            line += f"; memory peak {format_size(int(memory.peak))}, mean {format_size(int(memory.mean))}"
        fields.append((f"gpu {index}", line))
    return fields


def _hours(value: float) -> str:
    return f"{value:.2f}"


@click.command()
@click.option("--since", default="", metavar="WHEN", help="from: a duration ago (30m, 2h, 3d) or an ISO date/time "
              "(default: the beginning)")
@click.option("--until", default="", metavar="WHEN", help="to: the same forms as --since (default: now)")
@click.option("-w", "--workspace", default="", help="this workspace's (admins; '*': every workspace); default: your "
              "token's")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def usage(since: str, until: str, workspace: str, output: str) -> None:
    """CPU-hours, GPU-hours and runs by workspace and user, of the runs that ran in the window (each run's wall
    time clipped to it), as Slurm's sreport gives them.

    CPU-HOURS are the CPU time the runs used, from their agents' samples of their processes (cgroup or process
    tree); ALLOC CPU-HOURS are requested CPUs x wall time; GPU-HOURS are assigned GPUs x wall time.
    """
    from runyard.cli import connect, parse_time

    now = time.time()
    start = parse_time("--since", since, now) if since else 0.0
    end = parse_time("--until", until, now) if until else 0.0
    if start and end and start >= end:
        raise UsageError(f"--since {since} is not before --until {until}")
    with connect() as client:
        found = client.usage(since=start, until=end, workspace=workspace)
    totals: dict[str, pb.UsageRow] = {}
    for row in found.rows:
        total = totals.setdefault(row.workspace, pb.UsageRow(workspace=row.workspace))
        total.runs += row.runs
        total.cpu_hours += row.cpu_hours
        total.cpu_hours_allocated += row.cpu_hours_allocated
        total.gpu_hours += row.gpu_hours
    if output == "json":
        shown: dict[str, Any] = {
            "since": found.since, "until": found.until,
            "rows": [_row(r) for r in found.rows],
            "workspaces": [_row(t, user=False) for t in totals.values()],
        }
        render.print_json(shown)
        return
    window = f"{render.when(found.since) or 'the beginning'} to {render.when(found.until)}"
    if not found.rows:
        render.console.print(f"no run ran from {window}", markup=False)
        return
    rows = []
    for name, total in totals.items():
        rows += [(r.workspace, r.user or "-", r.runs, _hours(r.cpu_hours), _hours(r.cpu_hours_allocated),
                  _hours(r.gpu_hours)) for r in found.rows if r.workspace == name]
        rows.append((name, "(all)", total.runs, _hours(total.cpu_hours), _hours(total.cpu_hours_allocated),
                     _hours(total.gpu_hours)))
    render.print_table(("WORKSPACE", "USER", "RUNS", "CPU-HOURS", "ALLOC CPU-HOURS", "GPU-HOURS"), rows,
                       title=f"usage from {window}")


def _row(row: pb.UsageRow, *, user: bool = True) -> dict[str, Any]:
    shown: dict[str, Any] = {"workspace": row.workspace}
    if user:
        shown["user"] = row.user
    shown.update(runs=row.runs, cpu_hours=row.cpu_hours, cpu_hours_allocated=row.cpu_hours_allocated,
                 gpu_hours=row.gpu_hours)
    return shown
