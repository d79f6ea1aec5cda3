"""Turning a process's stdout/stderr pipe into bounded, sequence-numbered log records.

A line is split at `record_bytes`: every piece but the last of a line is marked `continued`, so a 10 MB line with
no newline is stored exactly, in bounded records. Bytes are kept as they are (invalid UTF-8, ANSI escapes).
Must not: buffer a whole line in memory or decode anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from protos import runyard_pb2 as pb

READ_BYTES = 64 * 1024


async def read_records(
    stream: asyncio.StreamReader, kind: pb.Stream, emit: Callable[[pb.LogRecord], None], *, record_bytes: int,
    rank: int = 0,
) -> int:
    """Read `stream` to EOF, calling `emit` for each record in order; returns how many were emitted. `rank`: the
    global rank of the process that writes it (a distributed run's)."""
    seq = 0
    pending = b""

    def flush(data: bytes, continued: bool) -> None:
        nonlocal seq
        emit(pb.LogRecord(stream=kind, seq=seq, ts=time.time(), data=data, continued=continued, rank=rank))
        seq += 1

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
    return seq
