"""RecordTail: the agent reads the SDK's records file line by line, one seq per line, never raising."""

from __future__ import annotations

import json
import logging
import math
import tracemalloc
from pathlib import Path

import pytest

from agent.records import Record, RecordTail


def _line(ts: float = 1.0, **fields: object) -> bytes:
    return (json.dumps({"ts": ts, **fields}, separators=(",", ":")) + "\n").encode()


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


def test_missing_file_returns_nothing_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    tail = RecordTail(path)
    assert tail.read_new() == []
    _append(path, _line(k=["loss"], v=[0.5], s=3))
    assert tail.read_new() == [Record(0, 1.0, ["loss"], [0.5], [3], {}, {}, "", None)]


def test_full_record_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    _append(
        path,
        b'{"ts":2.5,"k":["a","b","c"],"v":[NaN,-Infinity,7],"s":[0,-1,2],'
        b'"params":{"lr":"0.1"},"tags":{"team":"cv"},"run":"child1"}\n'
        b'{"ts":3,"child":{"id":"child1","name":"fold-1"}}\n',
    )
    first, second = RecordTail(path).read_new()
    assert first.seq == 0 and first.ts == 2.5 and first.run == "child1" and first.child is None
    (key_a, value_a, step_a), metric_b, metric_c = first.metrics
    assert (key_a, step_a) == ("a", 0) and math.isnan(value_a)
    assert metric_b == ("b", -math.inf, -1)
    assert metric_c == ("c", 7.0, 2) and isinstance(metric_c[1], float)
    assert first.params == {"lr": "0.1"} and first.tags == {"team": "cv"}
    assert second == Record(1, 3.0, [], [], [], {}, {}, "", ("child1", "fold-1"))


def test_partial_line_is_held_back_until_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    tail = RecordTail(path)
    whole = _line(k=["loss"], v=[1.5], s=[0])
    _append(path, whole[:10])
    assert tail.read_new() == []
    _append(path, whole[10:-1])
    assert tail.read_new() == []
    _append(path, b"\n" + _line(ts=2.0)[:5])
    assert [(r.seq, r.metrics) for r in tail.read_new()] == [(0, (("loss", 1.5, 0),))]
    _append(path, _line(ts=2.0)[5:])
    assert [(r.seq, r.ts) for r in tail.read_new()] == [(1, 2.0)]
    assert tail.read_new() == []


BAD_LINES = {
    "not json": b"not json",
    "empty": b"",
    "array": b"[1, 2]",
    "no ts": b'{"k": []}',
    "ts string": b'{"ts": "1"}',
    "ts nan": b'{"ts": NaN}',
    "ts bool": b'{"ts": true}',
    "keys not list": b'{"ts": 1, "k": "a", "v": [1], "s": 0}',
    "values missing": b'{"ts": 1, "k": ["a"], "s": 0}',
    "columns of two lengths": b'{"ts": 1, "k": ["a", "b"], "v": [1], "s": 0}',
    "steps of another length": b'{"ts": 1, "k": ["a", "b"], "v": [1, 2], "s": [0]}',
    "metric key not text": b'{"ts": 1, "k": [1], "v": [1], "s": 0}',
    "metric key a list": b'{"ts": 1, "k": [["a"]], "v": [1], "s": 0}',
    "metric key empty": b'{"ts": 1, "k": [""], "v": [1], "s": 0}',
    "metric value string": b'{"ts": 1, "k": ["a"], "v": ["1"], "s": 0}',
    "metric value bool": b'{"ts": 1, "k": ["a"], "v": [true], "s": 0}',
    "metric value huge int": b'{"ts": 1, "k": ["a"], "v": [1' + b"0" * 400 + b'], "s": 0}',
    "metric step float": b'{"ts": 1, "k": ["a"], "v": [1], "s": 1.5}',
    "metric step float in a list": b'{"ts": 1, "k": ["a", "b"], "v": [1, 2], "s": [0, 1.5]}',
    "metric step bool": b'{"ts": 1, "k": ["a"], "v": [1], "s": [true]}',
    "metric step over int64": b'{"ts": 1, "k": ["a"], "v": [1], "s": 9223372036854775808}',
    "param value int": b'{"ts": 1, "params": {"lr": 0.1}}',
    "tags list": b'{"ts": 1, "tags": ["a"]}',
    "run int": b'{"ts": 1, "run": 5}',
    "child without id": b'{"ts": 1, "child": {"name": "x"}}',
    "lone surrogate": b'{"ts": 1, "params": {"p": "\\ud800"}}',
    "invalid utf-8": b'{"ts": 1, "tags": {"t": "\xff\xfe"}}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("bad", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_bad_line_consumes_its_seq_and_is_logged(
    tmp_path: Path, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "records.jsonl"
    _append(path, _line(ts=1.0) + bad + b"\n" + _line(ts=3.0))
    with caplog.at_level(logging.WARNING, logger="agent.records"):
        records = RecordTail(path).read_new()
    assert [(r.seq, r.ts) for r in records] == [(0, 1.0), (2, 3.0)]
    assert [r.seq for r in caplog.records] == [1]


def test_line_over_the_limit_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "records.jsonl"
    at_limit = _line(params={"p": "x" * 100})
    over = _line(params={"p": "x" * 101})
    limit = len(at_limit) - 1
    _append(path, at_limit + over + _line(ts=4.0))
    with caplog.at_level(logging.WARNING, logger="agent.records"):
        records = RecordTail(path, max_line_bytes=limit).read_new()
    assert [(r.seq, r.ts) for r in records] == [(0, 1.0), (2, 4.0)]
    assert records[0].params == {"p": "x" * 100}
    assert [r.seq for r in caplog.records] == [1]


def test_overlong_line_still_growing_is_discarded_across_calls(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    tail = RecordTail(path, max_line_bytes=100)
    _append(path, _line(ts=1.0) + b'{"ts": 2, "params": {"p": "' + b"y" * 150)
    assert [r.seq for r in tail.read_new()] == [0]
    _append(path, b"y" * 5000)
    assert tail.read_new() == []
    _append(path, b'"}}\n' + _line(ts=5.0))
    assert [(r.seq, r.ts) for r in tail.read_new()] == [(2, 5.0)]


def test_overlong_line_is_not_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    _append(path, _line(ts=1.0) + b"z" * (40 << 20) + b"\n" + _line(ts=2.0))
    tail = RecordTail(path, max_line_bytes=1000)
    tracemalloc.start()
    try:
        records = _read_until_seq(tail, 2)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(r.seq, r.ts) for r in records] == [(0, 1.0), (2, 2.0)]
    assert peak_bytes < 8 << 20


def _read_until_seq(tail: RecordTail, seq: int) -> list[Record]:
    records: list[Record] = []
    for _ in range(100):  # each call reads a bounded number of bytes; a few calls get past the long line
        records += tail.read_new()
        if records and records[-1].seq >= seq:
            break
    return records


def test_each_call_is_bounded_and_the_next_continues(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    _append(path, b"".join(_line(ts=float(i)) for i in range(25)))
    tail = RecordTail(path, max_lines_per_call=10)
    batches = [tail.read_new() for _ in range(3)]
    assert [len(batch) for batch in batches] == [10, 10, 5]
    _append(path, b"garbage\n" + _line(ts=99.0))
    batches.append(tail.read_new())
    seqs = [r.seq for batch in batches for r in batch]
    assert seqs == [*range(25), 26]
    assert [r.ts for batch in batches for r in batch] == [*map(float, range(25)), 99.0]
    assert tail.next_seq == 27 and tail.read_new() == []
