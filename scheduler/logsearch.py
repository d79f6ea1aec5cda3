"""`runyard logs --grep`: search the stored logs of several runs for lines matching a regular expression.

A search reads the runs' log records in pages of the store (never a whole log in memory), joins the records of a
line the agent split (`continued`), decodes each line as UTF-8 with replacement and matches it with Python's `re`,
the matching in a worker thread so that the head's event loop never waits on a pattern. The work of one search is
bounded: at most `Limits.records` records read, `Limits.budget_s` seconds spent and `Limits.matches` matches
kept; the result says which bound stopped it.
Must not: know about gRPC or protobuf, or write anything.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from scheduler.errors import InvalidArgument
from scheduler.model import LogRow
from scheduler.store import LOG_CONTINUED, LOG_GAP, Store

PATTERN_MAX_CHARS = 1000
PAGE_RECORDS = 256          # records are at most the agent's log_record_bytes (64 KiB) each
LINE_MATCH_BYTES = 1 << 20  # the part of a (joined) line that is matched; the rest of a longer line is not
LINE_SHOWN_CHARS = 4096     # what a match carries of its line
DEFAULT_MATCHES = 1000


@dataclass(frozen=True, slots=True)
class Limits:
    records: int = 2_000_000    # log records read per search
    budget_s: float = 5.0       # seconds of reading and matching per search
    matches: int = DEFAULT_MATCHES   # matches kept


@dataclass(frozen=True, slots=True)
class Source:
    """One run asked for: the runs whose records are its logs (itself, or a multi-node run's children), the node
    rank of each child of a multi-node run, and whether its lines say which rank wrote them."""

    run_id: str
    log_ids: tuple[str, ...]
    ranks: dict[str, int]
    ranked: bool


@dataclass(frozen=True, slots=True)
class Match:
    run_id: str
    attempt: int
    rank: int
    ranked: bool
    stream: int
    ts: float
    line: str


@dataclass(slots=True)
class Result:
    matches: list[Match] = field(default_factory=list)
    scanned: int = 0
    stopped: str = ""


def compile_pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """The caller's pattern, compiled; InvalidArgument for an empty, too long or invalid one."""
    if not pattern:
        raise InvalidArgument("give a pattern to search for")
    if len(pattern) > PATTERN_MAX_CHARS:
        raise InvalidArgument(f"the pattern is {len(pattern):,} characters, over the limit of {PATTERN_MAX_CHARS:,}")
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as err:
        raise InvalidArgument(f"the pattern {pattern!r} is not a valid regular expression: {err}") from None


class _Lines:
    """Joins the records of each (run, attempt, rank, stream) into lines and matches every complete line."""

    def __init__(self, source: Source, pattern: re.Pattern[str]) -> None:
        self._source = source
        self._pattern = pattern
        self._open: dict[tuple[str, int, int, int], tuple[bytearray, float]] = {}

    def feed(self, rows: Sequence[LogRow], room: int) -> list[Match]:
        """The matching lines that `rows` complete, at most `room` of them."""
        found: list[Match] = []
        for row in rows:
            if row.flags & LOG_GAP:
                continue
            key = (row.run_id, row.attempt, row.rank, row.stream)
            data, ts = self._open.pop(key, (bytearray(), row.ts))
            if len(data) < LINE_MATCH_BYTES:
                data += row.data[:LINE_MATCH_BYTES - len(data)]
            if row.flags & LOG_CONTINUED:
                self._open[key] = (data, ts)
                continue
            line = data.decode("utf-8", errors="replace")
            if self._pattern.search(line) and len(found) < room:
                found.append(Match(self._source.run_id, row.attempt, self._source.ranks.get(row.run_id, row.rank),
                                   self._source.ranked, row.stream, ts, line[:LINE_SHOWN_CHARS]))
        return found


async def search(store: Store, sources: Sequence[Source], pattern: re.Pattern[str], *, stream: int | None = None,
                 limits: Limits = Limits(), monotonic: Callable[[], float] = time.monotonic) -> Result:
    """Search the logs of `sources`, in order, each in the order its records were stored."""
    result = Result()
    started = monotonic()
    for source in sources:
        lines, after = _Lines(source, pattern), 0
        while source.log_ids:
            if result.scanned >= limits.records:
                result.stopped = (f"stopped after reading {result.scanned:,} log records, the most one search "
                                  "reads; search fewer runs")
                return result
            if monotonic() - started >= limits.budget_s:
                result.stopped = (f"stopped after {limits.budget_s:g} s, the time one search may take, having read "
                                  f"{result.scanned:,} log records; search fewer runs")
                return result
            page = min(PAGE_RECORDS, limits.records - result.scanned)
            rows = await store.read_logs(source.log_ids, after_id=after, limit=page, stream=stream)
            if not rows:
                break
            after = rows[-1].id
            result.scanned += len(rows)
            room = limits.matches - len(result.matches)
            result.matches += await asyncio.to_thread(lines.feed, rows, room)
            if len(result.matches) >= limits.matches:
                result.stopped = (f"stopped at {limits.matches:,} matches, the most one search returns; narrow the "
                                  "pattern or search fewer runs")
                return result
    return result
