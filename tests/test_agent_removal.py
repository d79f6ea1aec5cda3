"""Removing what a run left: any depth, links never followed, one descriptor at a time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.removal import remove_tree


def nest(root: Path, depth: int, *, every: int = 0, outside: Path | None = None) -> None:
    """`depth` nested directories below `root`, built with relative steps (the path outgrows PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if every and level % every == 0:
                with open(os.open("file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
                    f.write("x")
                if outside is not None:
                    os.symlink(outside, "to-outside", dir_fd=fd)
    finally:
        os.close(fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(60)
def test_three_thousand_nested_directories_are_removed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("the agent's own file")
    victim = tmp_path / "run"
    victim.mkdir()
    nest(victim, 3000, every=250, outside=outside)
    fds = open_fds()
    remove_tree(victim)
    assert not victim.exists()
    assert (outside / "keep").read_text() == "the agent's own file", "a link must be removed, never followed"
    assert open_fds() == fds


def test_links_are_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "keep").write_text("keep")
    victim = tmp_path / "run"
    victim.mkdir()
    (victim / "dir-link").symlink_to(outside)
    (victim / "file-link").symlink_to(outside / "sub" / "keep")
    (victim / "dangling").symlink_to(tmp_path / "nothing")
    remove_tree(victim)
    assert not victim.exists() and (outside / "sub" / "keep").read_text() == "keep"

    link = tmp_path / "top-link"
    link.symlink_to(outside)
    remove_tree(link)  # a link at the top is removed itself
    assert not link.is_symlink() and (outside / "sub" / "keep").exists()


def test_wide_trees_and_locked_directories(tmp_path: Path) -> None:
    victim = tmp_path / "run"
    for i in range(300):
        (victim / "wide" / f"d{i}" / "inner").mkdir(parents=True)
        (victim / "wide" / f"d{i}" / "f").write_text("x")
    (victim / "locked" / "inner").mkdir(parents=True)
    (victim / "locked" / "inner" / "f").write_text("x")
    (victim / "locked" / "inner").chmod(0o500)
    (victim / "locked").chmod(0)
    remove_tree(victim)
    assert not victim.exists()


def test_missing_paths_and_plain_files(tmp_path: Path) -> None:
    remove_tree(tmp_path / "missing")
    remove_tree(tmp_path / "no-parent" / "missing")
    single = tmp_path / "file"
    single.write_text("x")
    remove_tree(single)
    assert not single.exists() and tmp_path.exists()
