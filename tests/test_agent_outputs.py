"""Zipping a run's outputs as root: only the run's own regular files, never what a link or a FIFO points at."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from agent.outputs_archive import zip_outputs

RUN_UID = 200555


def names(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    keep = tmp_path / "agent" / "node.json"
    keep.parent.mkdir()
    keep.write_text('{"node_token": "secret"}')
    return keep


def test_links_and_fifos_in_outputs_are_left_out(tmp_path: Path, secret: Path) -> None:
    outputs = tmp_path / "code" / "outputs"
    (outputs / "sub").mkdir(parents=True)
    (outputs / "model.txt").write_text("weights")
    (outputs / "sub" / "log.txt").write_text("log")
    (outputs / "key.json").symlink_to(secret)
    (outputs / "agent").symlink_to(secret.parent)
    os.mkfifo(outputs / "pipe")   # opening a FIFO to read would block the agent for ever
    zipped = zip_outputs(outputs, tmp_path / "outputs.zip", max_bytes=1 << 20)
    assert zipped.files == 2
    assert names(tmp_path / "outputs.zip") == {"model.txt": b"weights", "sub/log.txt": b"log"}
    assert (tmp_path / "outputs.zip").stat().st_mode & 0o777 == 0o600


def test_outputs_that_is_itself_a_link_uploads_nothing(tmp_path: Path, secret: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "outputs").symlink_to(secret.parent)
    zipped = zip_outputs(tmp_path / "code" / "outputs", tmp_path / "outputs.zip", max_bytes=1 << 20)
    assert (zipped.sha256, zipped.files) == ("", 0) and not (tmp_path / "outputs.zip").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another uid")
def test_only_files_the_run_owns_are_taken(tmp_path: Path, secret: Path) -> None:
    """A hard link to the agent's file (where the kernel allows one) is a regular file, but not the run's."""
    outputs = tmp_path / "code" / "outputs"
    outputs.mkdir(parents=True)
    mine = outputs / "mine.txt"
    mine.write_text("the run's")
    os.chown(mine, RUN_UID, RUN_UID)
    os.link(secret, outputs / "hard.json")
    zipped = zip_outputs(outputs, tmp_path / "outputs.zip", max_bytes=1 << 20, owner=RUN_UID)
    assert zipped.files == 1 and names(tmp_path / "outputs.zip") == {"mine.txt": b"the run's"}
