"""Writing log chunks as the run wrote them: streams to their files, marks, prefixes, lines cut into records."""

from __future__ import annotations

import pytest

from protos import runyard_pb2 as pb
from runyard.render import LogWriter


def chunk(*records: tuple[bytes, int], stream: pb.Stream = pb.STDOUT, rank: int = 0, attempt: int = 1) -> pb.LogChunk:
    return pb.LogChunk(attempt=attempt, rank=rank, stream=stream, first_seq=0, data=b"".join(r[0] for r in records),
                       lengths=[len(r[0]) for r in records], flags=bytes(r[1] for r in records),
                       ts=[1.0] * len(records))


def test_lines_go_to_their_streams_with_their_marks(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    writer = LogWriter()
    writer.write(chunk((b"one", 0), (b"two", 0)))
    writer.write(chunk((b"oops", 0), stream=pb.STDERR))
    writer.write(chunk((b"stopping", 0), (b"3 records dropped", 2), stream=pb.SYSTEM))
    writer.write(chunk((b"+ numpy", 0), stream=pb.BUILD))
    out, err = capfdbinary.readouterr()
    assert out == b"one\ntwo\n"
    assert err == b"oops\n[runyard] stopping\n[runyard] 3 records dropped\n[build] + numpy\n"


def test_a_line_cut_into_records_is_one_line_even_across_chunks(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    writer = LogWriter(prefix_rank=True, prefix_attempt=True)
    writer.write(chunk((b"a" * 3, 1), (b"b" * 3, 1), rank=2, attempt=2))
    writer.write(chunk((b"x", 0), rank=3, attempt=2))       # another rank's line meanwhile
    writer.write(chunk((b"c", 0), (b"next", 0), rank=2, attempt=2))
    assert capfdbinary.readouterr().out == (b"[attempt 2] [rank 2] aaabbb[attempt 2] [rank 3] x\nc\n"
                                            b"[attempt 2] [rank 2] next\n")
