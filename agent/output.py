"""Turning a process's stdout/stderr pipe into bounded, sequence-numbered log records.

A line is split at `record_bytes`: every piece but the last of a line is marked `continued`, so a 10 MB line with
no newline is stored exactly, in bounded records. Bytes are kept as they are (invalid UTF-8, ANSI escapes).
A launcher's output (`torchrun`, started with `RANK_PREFIX_TEMPLATE` as its line prefix and `--tee` on) mixes its
workers' lines, each prefixed `[rankR]:`; with `tagged` ranks, such a line is stored as rank R's, without the
prefix, and the launcher's own lines as `rank`'s. Sequence numbers are per rank.
Must not: buffer a whole line in memory or decode anything.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Collection

from protos import runyard_pb2 as pb

READ_BYTES = 64 * 1024
RANK_PREFIX_TEMPLATE = "[rank${rank}]:"        # torchrun's TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE syntax
_RANK_PREFIX = re.compile(rb"\[rank(\d{1,7})\]:")


async def read_records(
    stream: asyncio.StreamReader, kind: pb.Stream, emit: Callable[[pb.LogRecord], None], *, record_bytes: int,
    rank: int = 0, tagged: Collection[int] = (),
) -> int:
    """Read `stream` to EOF, calling `emit` for each record in order; returns how many were emitted. `rank`: the
    global rank of the process that writes it (a distributed run's); `tagged`: the ranks whose prefixed lines
    it passes on (a launcher's workers)."""
    seqs: dict[int, int] = {}
    pending = b""
    line_rank: int | None = None        # the rank of a line whose first record has been emitted

    def flush(data: bytes, continued: bool) -> None:
        nonlocal line_rank
        own = line_rank
        if own is None:
            own = rank
            found = _RANK_PREFIX.match(data) if tagged else None
            if found and int(found[1]) in tagged:
                own, data = int(found[1]), data[found.end():]
        line_rank = own if continued else None
        seq = seqs.get(own, 0)
        seqs[own] = seq + 1
        emit(pb.LogRecord(stream=kind, seq=seq, ts=time.time(), data=data, continued=continued, rank=own))

    while chunk := await stream.read(READ_BYTES):
        pending += chunk
        while True:
            newline = pending.find(b"\n", 0, record_bytes + 1)
            if newline >= 0:
                flush(pending[:newline], False)
                pending = pending[newline + 1 :]
            elif len(pending) > record_bytes:
                flush(pending[:record_bytes], True)
                pending = pending[record_bytes:]
            else:
                break
    if pending:
        flush(pending, False)
    return sum(seqs.values())
