"""Registered environments and runs' environments in the store, on a real SQLite database: versions never change,
the next version and `@latest` go by number, a run keeps its spec, hash and exact version, queued included."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runyard.envspec import EnvSpec, identity
from scheduler.core.lifecycle import RunState, Trigger
from scheduler.errors import AlreadyExists, NotFound
from scheduler.model import EnvironmentRecord, NewRun, RunSpec
from scheduler.store import Store
from tests.test_store import open_store

TORCH = EnvSpec(python="3.11", pip=("numpy>=2", "torch==2.3.0"))
JAX = EnvSpec(python="3.11", pip=("jax",))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "head")
    yield opened
    await opened.close()


def env(name: str = "train", version: str = "", spec: EnvSpec = TORCH, workspace: str = "default") -> EnvironmentRecord:
    return EnvironmentRecord(workspace=workspace, name=name, version=version, description="d", tags={"t": "1"},
                             spec=spec, created_at=0.0, created_by="ana")


async def test_a_registered_version_reads_back_as_created(store: Store) -> None:
    stored, created = await store.create_environment(env(version="1"))

    assert created and stored.created_at > 0
    assert await store.get_environment("default", "train", "1") == stored
    assert (stored.spec, stored.tags, stored.created_by) == (TORCH, {"t": "1"}, "ana")


async def test_the_same_spec_again_is_the_same_version_and_another_spec_is_refused(store: Store) -> None:
    first, _ = await store.create_environment(env(version="1"))

    again, created = await store.create_environment(dataclasses.replace(env(version="1"), description="other"))
    assert (again, created) == (first, False)
    with pytest.raises(AlreadyExists, match=r"train:1 exists with another spec.*create version 2"):
        await store.create_environment(env(version="1", spec=JAX))
    assert (await store.get_environment("default", "train", "1")).spec == TORCH


async def test_without_a_version_the_next_whole_number_is_taken_unless_the_latest_has_the_spec(store: Store) -> None:
    await store.create_environment(env(version="9"))
    await store.create_environment(env(version="2", spec=JAX))

    same, created_same = await store.create_environment(env(spec=TORCH))
    assert (same.version, created_same) == ("9", False)
    made, created = await store.create_environment(env(spec=EnvSpec(pip=("scipy",))))
    assert (made.version, created) == ("10", True)


async def test_latest_is_the_highest_version_by_number(store: Store) -> None:
    for version, spec in (("2", TORCH), ("10", JAX), ("9", TORCH)):
        await store.create_environment(env(version=version, spec=spec))

    latest = await store.get_environment("default", "train")

    assert (latest.version, latest.spec) == ("10", JAX)
    assert [e.version for e in await store.list_environments("default")] == ["2", "9", "10"]


async def test_environments_belong_to_their_workspace(store: Store) -> None:
    await store.create_environment(env(version="1", workspace="other"))

    with pytest.raises(NotFound, match="no environment 'train' in this workspace"):
        await store.get_environment("default", "train")
    assert await store.list_environments("default") == []
    mine, created = await store.create_environment(env(version="1", spec=JAX))
    assert created and mine.spec == JAX


async def test_a_missing_version_names_the_versions_there_are(store: Store) -> None:
    await store.create_environment(env(version="1"))

    with pytest.raises(NotFound, match=r"has no version '7' \(it has 1\)"):
        await store.get_environment("default", "train", "7")


async def test_a_run_keeps_its_environment_its_hash_and_its_exact_version(store: Store) -> None:
    spec = RunSpec(argv=("python", "train.py"), env=TORCH, env_hash=identity(TORCH, "linux-x86_64"))
    run_id, _ = await store.create_run(NewRun(
        workspace="default", experiment="e", display_name="", tags={}, properties={}, snapshot_sha256="0" * 64,
        spec=spec, idempotency_key="", parent_id="", env_name="train", env_version="10"))

    run = await store.get_run(run_id)
    (queued,) = await store.queued()

    assert (run.spec, run.env_name, run.env_version) == (spec, "train", "10")
    assert (queued.env_hash, queued.python, queued.conda, queued.image) == (spec.env_hash, "3.11", False, False)
    assert RunSpec.from_json(spec.to_json()) == spec


async def test_a_multi_node_run_s_children_run_in_its_environment(store: Store) -> None:
    conda = EnvSpec(conda=("libgomp",), image="python:3.11")
    spec = RunSpec(argv=("true",), instance_count=2, env=conda, env_hash=identity(conda, "linux-x86_64"))
    parent_id, _ = await store.create_run(NewRun(
        workspace="default", experiment="e", display_name="", tags={}, properties={}, snapshot_sha256="0" * 64,
        spec=spec, idempotency_key="", parent_id="", env_name="base", env_version="3"))
    (queued,) = await store.queued()
    assert (queued.conda, queued.image) == (True, True)

    _, children = await store.assign_gang(parent_id, [("n1", ()), ("n2", ())], detail="placed")

    assert [(c.spec.env, c.spec.env_hash, c.env_name, c.env_version) for c in children] == [
        (conda, spec.env_hash, "base", "3")] * 2
    assert [c.state for c in children] == [RunState.PREPARING] * 2


async def test_a_run_without_an_environment_reads_back_without_one(store: Store) -> None:
    run_id, _ = await store.create_run(NewRun(
        workspace="default", experiment="e", display_name="", tags={}, properties={}, snapshot_sha256="0" * 64,
        spec=RunSpec(argv=("true",)), idempotency_key="", parent_id=""))
    run = await store.transition(run_id, Trigger.ASSIGN, node_id="n1")

    assert (run.spec.env, run.spec.env_hash, run.env_name) == (EnvSpec(), "", "")


async def test_logs_are_read_by_stream(store: Store) -> None:
    run_id, _ = await store.create_run(NewRun(
        workspace="default", experiment="e", display_name="", tags={}, properties={}, snapshot_sha256="0" * 64,
        spec=RunSpec(argv=("true",)), idempotency_key="", parent_id=""))
    build, stdout = 4, 1
    await store.append_logs(run_id, 1, [(0, build if i % 2 else stdout, i, 1.0, 0, f"line {i}".encode())
                                        for i in range(10)])

    only_build = await store.read_logs(run_id, stream=build)
    last_two = await store.read_logs(run_id, stream=build, after_id=await store.tail_start(run_id, 2, stream=build))

    assert [r.data for r in only_build] == [f"line {i}".encode() for i in (1, 3, 5, 7, 9)]
    assert [r.data for r in last_two] == [b"line 7", b"line 9"]
