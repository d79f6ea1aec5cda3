"""The data directory lock: one holder at a time, named to whoever is refused, and gone when its holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runyard.datadir import LOCK_FILE, DataDirLock
from runyard.errors import DataDirInUse, RunyardError

HOLDER = """
import sys, time
from runyard.datadir import DataDirLock
lock = DataDirLock.take(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_holder_is_refused_naming_the_first_and_the_lock_file_is_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with DataDirLock.take(data):
        lock_file = data / LOCK_FILE
        assert lock_file.read_text() == f"{os.getpid()}\n"
        for attempt in (DataDirLock.take, DataDirLock.check):
            with pytest.raises(DataDirInUse) as caught:
                attempt(data)
            assert caught.value.pid == os.getpid()
            assert f"in use by process {os.getpid()}" in str(caught.value) and str(data) in str(caught.value)
        assert lock_file.read_text() == f"{os.getpid()}\n"
    with DataDirLock.take(data):  # released: free again
        pass
    DataDirLock.check(data)


def test_check_of_a_directory_nobody_used_creates_nothing(tmp_path: Path) -> None:
    DataDirLock.check(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    DataDirLock.check(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_also_free_refuses_when_a_subdirectory_is_held_and_writes_no_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with DataDirLock.take(data / "head"):
        with pytest.raises(DataDirInUse) as caught:
            DataDirLock.take(data, also_free=[data / "head"])
        assert caught.value.directory == str(data / "head")
        assert (data / LOCK_FILE).read_text() == ""
        DataDirLock.take(data).release()   # the directory itself was not left locked


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(DataDirInUse) as caught:
            DataDirLock.take(data)
        assert caught.value.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
    with DataDirLock.take(data):
        assert (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_data_dir_that_cannot_be_created_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(RunyardError) as caught:
        DataDirLock.take(tmp_path / "file" / "data")
    assert type(caught.value) is RunyardError
    assert str(caught.value) == f"cannot use data directory {tmp_path / 'file' / 'data'}: Not a directory"
