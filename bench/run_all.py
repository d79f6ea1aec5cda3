"""Run every benchmark `bench/s<N>_*.py`, collect their JSON, write `bench/results/latest.json`, print a table.

Each script runs as its own subprocess with a timeout and must print exactly one JSON object on stdout. A script
that fails, times out or prints something else is recorded with its exit code and the tail of its stderr, and
shown as failed in the table: never hidden. `make bench` runs this. The exit code is 1 when any script failed.

    .venv/bin/python bench/run_all.py                  # everything, default sizes
    .venv/bin/python bench/run_all.py --quick          # smoke sizes, for scripts that have --quick
    .venv/bin/python bench/run_all.py --only S1,S3     # some scenarios
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import clean, machine_info  # noqa: E402

SCRIPT = re.compile(r"^s(\d+)_[A-Za-z0-9_]+\.py$")
TAIL_CHARS = 3000
# Scripts that need more than --timeout-s: S7 installs MLflow into bench/.cache on its first run and logs 500k
# points per repeat into both; S8 and S9 submit 10,000 runs before they measure; S10 stores 100,000 runs and 10M log
# lines before its restarts; S13 (the CLI as processes: `--version`, `runs`, `show`, `nodes`, and 100 serial submits
# beside as many of Slurm's `sbatch` or `python -c pass`) starts about 200 processes.
MIN_TIMEOUT_S = {"s7_metrics.py": 2400.0, "s8_footprint.py": 900.0, "s9_reads.py": 900.0, "s10_restart.py": 1800.0,
                 "s13_cli.py": 900.0}


def scripts() -> list[Path]:
    found = [p for p in HERE.iterdir() if SCRIPT.match(p.name)]
    return sorted(found, key=lambda p: (int(SCRIPT.match(p.name).group(1)), p.name))  # type: ignore[union-attr]


def scenario_of(path: Path) -> str:
    return f"S{SCRIPT.match(path.name).group(1)}"  # type: ignore[union-attr]


def run_one(path: Path, *, quick: bool, timeout_s: float) -> dict[str, Any]:
    args = [sys.executable, str(path)]
    if quick and '"--quick"' in path.read_text():
        args.append("--quick")
    started = time.monotonic()
    base: dict[str, Any] = {"script": f"bench/{path.name}", "argv": args[1:]}
    # Its own session, so that a timeout also ends the head and agents it started (its whole process group).
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _end_group(proc)
        stdout, stderr = proc.communicate()
        return {**base, "ok": False, "error": f"timed out after {timeout_s:g} s", "stderr_tail": stderr[-TAIL_CHARS:],
                "elapsed_s": round(time.monotonic() - started, 1)}
    elapsed = round(time.monotonic() - started, 1)
    lines = [line for line in stdout.splitlines() if line.strip()]
    failure = None
    result: Any = None
    if proc.returncode != 0:
        failure = f"exited {proc.returncode}"
    elif len(lines) != 1:
        failure = f"printed {len(lines)} lines on stdout, not exactly one JSON object"
    else:
        try:
            result = json.loads(lines[0])
        except json.JSONDecodeError as err:
            failure = f"stdout is not JSON: {err}"
        else:
            if not isinstance(result, dict):
                failure = "stdout is JSON but not an object"
    if failure is not None:
        return {**base, "ok": False, "error": failure, "returncode": proc.returncode,
                "stderr_tail": stderr[-TAIL_CHARS:], "stdout_head": stdout[:TAIL_CHARS], "elapsed_s": elapsed}
    return {**base, "ok": True, "elapsed_s": elapsed, "result": result}


def _end_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the script's process group (it stops its cluster), SIGKILL what is left after 20 s."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            proc.poll()
            time.sleep(0.1)


# --- the table ---------------------------------------------------------------------------------------------------

def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The result's own table, or one row made from the older flat shape (goal_ms, ratio_to_goal, median_ms)."""
    if isinstance(result.get("table"), list):
        return result["table"]
    value = next((v["median_ms"] for v in result.values() if isinstance(v, dict) and "median_ms" in v), None)
    if value is None or "goal_ms" not in result:
        return [{"figure": f"{result.get('what', '')} (its JSON has no `table`: see latest.json)", "value": None,
                 "unit": "", "goal": None}]
    peer_key = next((k for k in result if k.startswith("peer_")), None)
    speedup = result.get("speedup_over_peer")
    return [{
        "figure": result.get("what", ""), "value": value, "unit": "ms", "goal": result.get("goal_ms"), "goal_op": "<=",
        "ratio_to_goal": result.get("ratio_to_goal"),
        "meets": None if result.get("ratio_to_goal") is None else result["ratio_to_goal"] <= 1.0,
        "peer": peer_key[len("peer_"):].replace("_", " ") if peer_key else None,
        "peer_ratio": round(1 / speedup, 3) if speedup else None, "at_least": False,
    }]


def _num(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _with_unit(value: Any, unit: str) -> str:
    if unit == "/s":
        return f"{_num(value)}/s"
    return f"{_num(value)} {unit}".strip()


def table(entries: dict[str, dict[str, Any]]) -> str:
    out = ["| scenario | figure | goal | ratio to goal | peer ratio |", "|---|---|---|---|---|"]
    for scenario, entry in entries.items():
        if not entry["ok"]:
            tail = (entry.get("stderr_tail") or "").strip().splitlines()
            why = f"{entry['error']}: {tail[-1][:120]}" if tail else entry["error"]
            out.append(f"| {scenario} | **failed** ({why.replace('|', '/')}) | | | |")
            continue
        for r in _rows(entry["result"]):
            value = "" if r.get("value") is None else _with_unit(r.get("value"), r.get("unit", ""))
            if r.get("at_least"):
                value = f"at least {value}"
            goal = "–" if r.get("goal") is None else \
                f"{'≥' if r.get('goal_op') == '>=' else '≤'} {_with_unit(r['goal'], r.get('unit', ''))}"
            meets = {True: " (meets)", False: " (misses)"}.get(r.get("meets"), "")
            ratio_goal = f"{_num(r.get('ratio_to_goal'))}{meets}" if r.get("ratio_to_goal") is not None else "–"
            peer = f"{_num(r['peer_ratio'])}× {r['peer']}" if r.get("peer") and r.get("peer_ratio") is not None else "–"
            figure = f"{r.get('figure', '')}: **{value}**" if value else r.get("figure", "")
            out.append(f"| {scenario} | {figure} | {goal} | {ratio_goal} | {peer} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run every bench/s<N>_*.py and collect the results.")
    parser.add_argument("--quick", action="store_true", help="pass --quick to scripts that take it")
    parser.add_argument("--only", default="", help="comma-separated scenarios, e.g. S1,S3")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per script")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args()
    wanted = {s.strip().upper() for s in args.only.split(",") if s.strip()}

    meta = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
            "machine": machine_info(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    entries: dict[str, dict[str, Any]] = {}
    for path in scripts():
        scenario = scenario_of(path)
        if wanted and scenario not in wanted:
            continue
        print(f"running bench/{path.name} ...", file=sys.stderr, flush=True)
        entry = run_one(path, quick=args.quick, timeout_s=max(args.timeout_s, MIN_TIMEOUT_S.get(path.name, 0.0)))
        key = entry["result"].get("scenario", scenario) if entry["ok"] else scenario
        while key in entries:  # two scripts of one scenario keep both
            key += "'"
        entries[key] = entry
        status = "ok" if entry["ok"] else f"FAILED: {entry['error']}"
        print(f"  {status} in {entry['elapsed_s']} s", file=sys.stderr, flush=True)
        if not entry["ok"] and entry.get("stderr_tail"):
            print("  " + entry["stderr_tail"][-800:].replace("\n", "\n  "), file=sys.stderr, flush=True)
    meta["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    # A dict by scenario; `_meta` says when, where and how.
    doc: dict[str, Any] = {"_meta": meta}
    for key, entry in entries.items():
        doc[key] = entry["result"] if entry["ok"] else {k: v for k, v in entry.items() if k != "result"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean(doc), indent=1, allow_nan=False) + "\n")
    tmp.replace(args.out)

    m = meta["machine"]
    print(table(entries))
    print()
    print(f"{m['cpus']} × {m['cpu_model']}, Python {m['python']}, grpcio {m['grpcio']}; "
          f"{meta['started_at']}{' (--quick)' if args.quick else ''}; a shared machine, so figures are indicative. "
          f"Ratio to goal = figure ÷ goal; peer ratio = our figure ÷ the peer's or limit's, measured in the same run "
          f"(for a rate higher is better, for a time lower). Rerun: `make bench` (writes bench/results/latest.json).")
    sys.exit(0 if all(e["ok"] for e in entries.values()) else 1)


if __name__ == "__main__":
    main()
