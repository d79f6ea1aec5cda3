"""The archive's layout is checked before zipfile parses it: the entry count and the central directory's place from
the end record, and entries that share bytes (the "better zip bomb"). Both the head's check and the agent's
extraction refuse such archives; a snapshot Runyard wrote passes."""

from __future__ import annotations

import struct
import tracemalloc
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runyard.errors import SnapshotInvalid
from runyard.snapshot import create_snapshot, safe_extract, validate_archive
from testbed import zips

MB = 1024 * 1024
LIMIT = 100_000


def _refusals(archive: Path, tmp_path: Path, *, max_entries: int = LIMIT,
              max_bytes: int = 100 * MB) -> list[SnapshotInvalid]:
    """The refusal of the head's check and of the agent's extraction; neither may write anything."""
    found = []
    with pytest.raises(SnapshotInvalid) as checked:
        validate_archive(archive, max_entries=max_entries, max_bytes=max_bytes)
    found.append(checked.value)
    dest = tmp_path / "dest"
    with pytest.raises(SnapshotInvalid) as extracted:
        safe_extract(archive, dest, max_entries=max_entries, max_bytes=max_bytes)
    found.append(extracted.value)
    assert not dest.exists()
    return found


@contextmanager
def _allocations() -> Iterator[list[int]]:
    """Yields a list that holds, once the block ends, the peak bytes Python allocated inside it (tracemalloc)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


# --- the entry count, from the end record ------------------------------------------------------------------------


def test_a_million_real_entries_are_refused_from_the_end_record_without_parsing(tmp_path: Path) -> None:
    archive = zips.many_empty_entries(tmp_path / "million.zip", 1_000_000)
    assert archive.stat().st_size > 80 * MB  # zipfile would build a million objects from this
    with _allocations() as peak:
        refusals = _refusals(archive, tmp_path)
    for refused in refusals:
        assert refused.entry == SnapshotInvalid.WHOLE
        assert str(refused) == "snapshot rejected: it has 1,000,000 entries; the limit is 100,000"
    assert peak[0] < MB  # a parse would take hundreds of MB


def test_a_zip64_end_record_claiming_a_million_entries_is_refused(tmp_path: Path) -> None:
    archive = zips.claimed_entries(tmp_path / "claims.zip", 1_000_000)
    with zipfile.ZipFile(archive) as opened:
        assert opened.namelist() == ["train.py"]  # zipfile never reads the count
    for refused in _refusals(archive, tmp_path):
        assert "it has 1,000,000 entries; the limit is 100,000" in str(refused)


def test_the_count_of_a_classic_end_record_is_refused_too(tmp_path: Path) -> None:
    archive = zips.many_empty_entries(tmp_path / "many.zip", 60_000)
    with _allocations() as peak:
        refusals = _refusals(archive, tmp_path, max_entries=1_000)
    for refused in refusals:
        assert "it has 60,000 entries; the limit is 1,000" in str(refused)
    assert peak[0] < MB


def test_zip64_end_records_within_the_limit_pass(tmp_path: Path) -> None:
    archive = tmp_path / "zip64.zip"
    with zipfile.ZipFile(archive, "w") as written:  # zipfile's own zip64 end records, past 65,535 entries
        for i in range(70_000):
            written.writestr(f"f/{i}", b"")
    validate_archive(archive, max_entries=70_000, max_bytes=MB)
    with pytest.raises(SnapshotInvalid, match="it has 70,000 entries; the limit is 69,999"):
        validate_archive(archive, max_entries=69_999, max_bytes=MB)


def _end_record(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def _with_count(archive: Path, entries: int) -> Path:
    """The archive with its end record's entry counts replaced."""
    data = bytearray(archive.read_bytes())
    end = _end_record(bytes(data))
    data[end + 8 : end + 12] = struct.pack("<HH", entries, entries)
    archive.write_bytes(bytes(data))
    return archive


def _zip(path: Path, count: int, name_chars: int = 8) -> Path:
    with zipfile.ZipFile(path, "w") as written:
        for i in range(count):
            written.writestr(str(i).zfill(name_chars), b"x")
    return path


def test_a_central_directory_holding_more_entries_than_the_end_record_says_is_refused(tmp_path: Path) -> None:
    archive = _with_count(_zip(tmp_path / "more.zip", 100), 10)  # 100 records of 54 bytes: room for 10 of them
    for refused in _refusals(archive, tmp_path):
        assert "holds more than the 10 entries its end record says" in str(refused)
        assert "not a snapshot Runyard wrote" in str(refused)


def test_a_central_directory_too_large_for_its_entry_count_is_refused(tmp_path: Path) -> None:
    archive = _with_count(_zip(tmp_path / "large.zip", 200), 1)
    for refused in _refusals(archive, tmp_path):
        assert "an entry count of 1 for a central directory of 10,800 bytes" in str(refused)


def test_a_central_directory_too_small_for_its_entry_count_is_refused(tmp_path: Path) -> None:
    archive = _with_count(_zip(tmp_path / "small.zip", 3), 5)
    for refused in _refusals(archive, tmp_path):
        assert "an entry count of 5 for a central directory of 162 bytes" in str(refused)


def test_a_central_directory_not_where_the_end_record_says_is_refused(tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", 3)
    prefixed = tmp_path / "prefixed.zip"
    prefixed.write_bytes(b"#!/bin/sh\nexit 0\n" + good.read_bytes())  # a self-extracting shape: zipfile takes it
    with zipfile.ZipFile(prefixed) as opened:
        assert len(opened.namelist()) == 3
    moved = bytearray(good.read_bytes())
    end = _end_record(bytes(moved))
    offset = struct.unpack_from("<L", moved, end + 16)[0]
    struct.pack_into("<L", moved, end + 16, offset - 1)
    shifted = tmp_path / "shifted.zip"
    shifted.write_bytes(bytes(moved))
    for archive in (prefixed, shifted):
        for refused in _refusals(archive, tmp_path):
            assert "its end record places the central directory" in str(refused)


def test_a_name_longer_than_a_snapshot_can_hold_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "long.zip"
    with zipfile.ZipFile(archive, "w") as written:
        written.writestr("a/" * 2100 + "x", b"x")  # 4,201 bytes; no component too long, no depth checked yet
    for refused in _refusals(archive, tmp_path):
        assert "has a name of 4,201 bytes" in str(refused)


def test_an_archive_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    for data in (b"", b"PK", b"PK\x05\x06" + b"\0" * 10, b"x" * 100_000):
        archive = tmp_path / "junk.zip"
        archive.write_bytes(data)
        for refused in _refusals(archive, tmp_path):
            assert "not a zip archive" in str(refused)


# --- overlapping entries -----------------------------------------------------------------------------------------


def test_a_better_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path: Path) -> None:
    bomb = zips.overlapping_bomb(tmp_path / "bomb.zip", entries=16, kernel_bytes=MB)
    with zipfile.ZipFile(bomb) as opened:  # a valid zip: every entry unpacks, CRCs and all
        unpacked = sum(len(opened.read(name)) for name in opened.namelist())
    assert unpacked > 16 * MB > 1000 * bomb.stat().st_size
    for refused in _refusals(bomb, tmp_path, max_bytes=100 * MB):  # within the cap: only the overlap refuses it
        assert refused.entry == "00001.bin"
        assert refused.why == "it overlaps entry '00000.bin': not a snapshot Runyard wrote"


def test_entries_that_all_point_at_one_deflated_kernel_are_refused(tmp_path: Path) -> None:
    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w", compression=zipfile.ZIP_DEFLATED) as written:
        written.writestr("kernel.bin", bytes(MB))
    data = one.read_bytes()
    central, end = data.index(b"PK\x01\x02"), _end_record(data)
    record = data[central:end]
    copies = [record.replace(b"kernel.bin", f"copy{i:04d}.b".encode()) for i in range(8)]  # same offset, 0
    directory = b"".join(copies)
    tail = bytearray(data[end:])
    struct.pack_into("<HHLL", tail, 8, len(copies), len(copies), len(directory), central)
    bomb = tmp_path / "kernel.zip"
    bomb.write_bytes(data[:central] + directory + bytes(tail))
    for refused in _refusals(bomb, tmp_path):
        assert refused.entry == "copy0001.b" and "it overlaps entry 'copy0000.b'" in refused.why


def test_an_entry_whose_data_runs_into_the_central_directory_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "runs.zip", 2)
    data = bytearray(archive.read_bytes())
    last = data.rindex(b"PK\x01\x02")
    compressed = struct.unpack_from("<L", data, last + 20)[0]
    struct.pack_into("<L", data, last + 20, compressed + 40)
    archive.write_bytes(bytes(data))
    for refused in _refusals(archive, tmp_path):
        assert refused.entry == "00000001" and "runs into the central directory" in refused.why


# --- what Runyard writes ----------------------------------------------------------------------------------------


def test_a_snapshot_runyard_wrote_still_passes_and_extracts(tmp_path: Path) -> None:
    source = tmp_path / "project"
    for i in range(50):
        path = source / f"pkg{i % 5}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"VALUE = {i}\n" * (i + 1))
    (source / "empty.txt").write_bytes(b"")
    (source / "weights.bin").write_bytes(bytes(3 * MB))
    snap = create_snapshot(source, tmp_path)
    validate_archive(snap.path, max_entries=snap.file_count, max_bytes=snap.source_bytes)
    dest = tmp_path / "run"
    assert safe_extract(snap.path, dest, max_entries=snap.file_count, max_bytes=snap.source_bytes) == snap.source_bytes
    assert (dest / "pkg3" / "mod13.py").read_text() == "VALUE = 13\n" * 14


def test_an_empty_snapshot_passes(tmp_path: Path) -> None:
    source = tmp_path / "empty"
    source.mkdir()
    snap = create_snapshot(source, tmp_path)
    validate_archive(snap.path, max_entries=10, max_bytes=MB)
    assert safe_extract(snap.path, tmp_path / "run", max_entries=10, max_bytes=MB) == 0
