"""Where a gang's processes meet: the head gives each gang a block of ports from MASTER_PORT up (one port; one per
process on a node for tensorflow) that fits every member node's rendezvous range and that no other live run holds on
any member node, and every child the variables a distributed launcher reads. On a real SQLite store."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protos import runyard_pb2 as pb
from scheduler.client_api import validate_spec
from scheduler.convert import spec_from_pb, spec_to_pb
from scheduler.core import gangs
from scheduler.core.lifecycle import Reason, Trigger
from scheduler.dispatch import peer_host
from scheduler.model import Distribution, NewRun, RunSpec
from scheduler.errors import InvalidArgument
from scheduler.store import Conflict, RendezvousRange, Store
from tests.test_store import open_store

DDP = RunSpec(argv=("python", "train.py"), instance_count=2, distribution=Distribution.PYTORCH, procs_per_node=2)
RANGES = [RendezvousRange("10.0.0.5", 29500, 29999), RendezvousRange("10.0.0.6", 29500, 29999)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "head")
    yield opened
    await opened.close()


async def submit(store: Store, spec: RunSpec = DDP) -> str:
    run_id, _ = await store.create_run(NewRun(
        workspace="default", experiment="e", display_name="", tags={}, properties={}, snapshot_sha256="0" * 64,
        spec=spec, idempotency_key="", parent_id=""))
    return run_id


async def test_every_child_gets_the_rendezvous_and_its_rank(store: Store) -> None:
    parent_id = await submit(store)

    _, children = await store.assign_gang(parent_id, [("n1", ()), ("n2", ())], detail="placed", rendezvous=RANGES)

    assert [{k: c.spec.environment[k] for k in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NPROC_PER_NODE",
                                                "WORLD_SIZE", "NODE_RANK")} for c in children] == [
        {"MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500", "NNODES": "2", "NPROC_PER_NODE": "2",
         "WORLD_SIZE": "4", "NODE_RANK": str(rank)} for rank in (0, 1)]
    assert [(c.spec.distribution, c.spec.procs_per_node) for c in children] == [(Distribution.PYTORCH, 2)] * 2


async def test_two_live_gangs_on_the_same_nodes_get_different_ports(store: Store) -> None:
    first, second = await submit(store), await submit(store)

    _, one = await store.assign_gang(first, [("n1", ()), ("n2", ())], detail="placed", rendezvous=RANGES)
    _, two = await store.assign_gang(second, [("n1", ()), ("n2", ())], detail="placed", rendezvous=RANGES)

    assert {c.spec.environment["MASTER_PORT"] for c in one} == {"29500"}
    assert {c.spec.environment["MASTER_PORT"] for c in two} == {"29501"}


async def test_a_port_is_free_again_once_its_gang_ended(store: Store) -> None:
    first, second = await submit(store), await submit(store)
    _, one = await store.assign_gang(first, [("n1", ()), ("n2", ())], detail="placed", rendezvous=RANGES)
    for child in one:
        await store.transition(child.id, Trigger.FAIL, reason=Reason.SIBLING_FAILED)

    _, two = await store.assign_gang(second, [("n1", ()), ("n2", ())], detail="placed", rendezvous=RANGES)

    assert {c.spec.environment["MASTER_PORT"] for c in two} == {"29500"}


async def test_a_gang_whose_node_has_no_free_port_is_refused(store: Store) -> None:
    first, second = await submit(store), await submit(store)
    narrow = [RendezvousRange("10.0.0.5", 29500, 29500), RendezvousRange("10.0.0.6", 29500, 29500)]
    await store.assign_gang(first, [("n1", ()), ("n2", ())], detail="placed", rendezvous=narrow)

    with pytest.raises(Conflict, match=re.escape("no block of 1 rendezvous port free")):
        await store.assign_gang(second, [("n1", ()), ("n2", ())], detail="placed", rendezvous=narrow)


@pytest.mark.parametrize(("used", "low", "high", "width", "port"), [
    ((), 29500, 29999, 1, 29500), (((29500, 1), (29502, 1)), 29500, 29999, 1, 29501), (((7, 1),), 7, 7, 1, None),
    (((1, 1),), 5, 6, 1, 5), (((29500, 1), (29502, 1)), 29500, 29999, 2, 29503),
    (((29500, 3),), 29500, 29999, 2, 29503), (((29502, 2), (29500, 1)), 29500, 29999, 2, 29504),
    (((29501, 1),), 29500, 29502, 2, None), ((), 29500, 29501, 2, 29500), ((), 29500, 29500, 2, None),
    (((29490, 20),), 29500, 29999, 1, 29510), (((29600, 5),), 29500, 29999, 4, 29500)])
def test_free_block_is_the_lowest_that_fits_and_overlaps_no_used_block(
        used: tuple[tuple[int, int], ...], low: int, high: int, width: int, port: int | None) -> None:
    assert gangs.free_block(used, low, high, width) == port


@pytest.mark.parametrize(("spec", "width"), [
    (DDP, 1), (RunSpec(argv=("t",), instance_count=2), 1),
    (RunSpec(argv=("t",), instance_count=2, distribution=Distribution.MPI, procs_per_node=4), 1),
    (RunSpec(argv=("t",), instance_count=2, distribution=Distribution.TENSORFLOW, procs_per_node=3, workers=5,
             parameter_servers=1), 3)])
def test_a_tensorflow_run_holds_a_port_per_process_on_a_node_others_one(spec: RunSpec, width: int) -> None:
    assert gangs.port_width(spec) == width


def test_a_gang_without_distribution_has_one_process_per_node() -> None:
    env = gangs.child_environment(RunSpec(argv=("true",), instance_count=3), 2, 3, None)

    assert env == {"NODE_RANK": "2", "NNODES": "3", "NPROC_PER_NODE": "1", "WORLD_SIZE": "3"}


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:10.0.0.5:4411", "10.0.0.5"), ("ipv6:[::1]:4411", "::1"), ("unix:/tmp/s", "")])
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


async def test_every_child_of_an_mpi_gang_gets_every_node_s_address_in_rank_order(store: Store) -> None:
    parent_id = await submit(store, RunSpec(argv=("python", "t.py"), instance_count=2, distribution=Distribution.MPI,
                                            procs_per_node=2))

    _, children = await store.assign_gang(parent_id, [("n1", ()), ("n2", ())], detail="placed", rendezvous=RANGES)

    assert [{k: c.spec.environment[k] for k in ("RUNYARD_NODE_ADDRESSES", "NODE_RANK", "NNODES", "NPROC_PER_NODE",
                                                "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} for c in children] == [
        {"RUNYARD_NODE_ADDRESSES": "10.0.0.5,10.0.0.6", "NODE_RANK": str(rank), "NNODES": "2", "NPROC_PER_NODE": "2",
         "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"} for rank in (0, 1)]
    assert [(c.spec.distribution, c.spec.procs_per_node) for c in children] == [(Distribution.MPI, 2)] * 2


def tf_pb(workers: int, servers: int, nodes: int) -> pb.RunSpec:
    return pb.RunSpec(argv=["python", "t.py"], resources=pb.Resources(instance_count=nodes),
                      distribution=pb.Distribution(type="tensorflow", worker_count=workers,
                                                   parameter_server_count=servers))


@pytest.mark.parametrize(("workers", "servers", "nodes", "per_node"), [(3, 1, 2, 2), (4, 1, 2, 3), (1, 0, 1, 1)])
def test_the_head_spreads_tensorflow_processes_ceil_of_their_count_per_node(
        workers: int, servers: int, nodes: int, per_node: int) -> None:
    spec = spec_from_pb(tf_pb(workers, servers, nodes))
    validate_spec(spec)

    assert (spec.distribution, spec.procs_per_node, spec.workers, spec.parameter_servers) == (
        Distribution.TENSORFLOW, per_node, workers, servers)
    assert spec_from_pb(spec_to_pb(spec)) == spec


@pytest.mark.parametrize(("workers", "servers", "nodes", "message"), [
    (0, 1, 1, "needs worker_count in [1, 4096]"), (1, -1, 1, "parameter_server_count"),
    (3, 1, 3, "leave a node of 3 without any")])
def test_the_head_refuses_tensorflow_counts_it_cannot_spread(workers: int, servers: int, nodes: int,
                                                              message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        validate_spec(spec_from_pb(tf_pb(workers, servers, nodes)))


async def test_every_child_of_a_tensorflow_gang_carries_the_counts_and_every_address(store: Store) -> None:
    parent_id = await submit(store, spec_from_pb(tf_pb(3, 1, 2)))

    _, children = await store.assign_gang(parent_id, [("n1", ()), ("n2", ())], detail="placed", rendezvous=RANGES)

    assert [spec_to_pb(c.spec).distribution for c in children] == [pb.Distribution(
        type="tensorflow", process_count_per_instance=2, worker_count=3, parameter_server_count=1)] * 2
    assert [(c.spec.environment["NODE_RANK"], c.spec.environment["RUNYARD_NODE_ADDRESSES"]) for c in children] == [
        ("0", "10.0.0.5,10.0.0.6"), ("1", "10.0.0.5,10.0.0.6")]


def member(address: str, low: int = 29500, high: int = 29999) -> RendezvousRange:
    return RendezvousRange(address, low, high)


async def test_a_tensorflow_gang_holds_its_block_on_every_member_node(store: Store) -> None:
    tf_gang, other = await submit(store, spec_from_pb(tf_pb(3, 1, 2))), await submit(store)
    _, tf_children = await store.assign_gang(tf_gang, [("n1", ()), ("n2", ())], detail="placed",
                                             rendezvous=[member("10.0.0.5"), member("10.0.0.6")])

    # The other gang's rank 0 is n2, where the tensorflow gang's second node listens at 29500 and 29501.
    _, children = await store.assign_gang(other, [("n2", ()), ("n3", ())], detail="placed",
                                          rendezvous=[member("10.0.0.6"), member("10.0.0.7")])

    assert {c.spec.environment["MASTER_PORT"] for c in tf_children} == {"29500"}
    assert {(c.spec.environment["MASTER_ADDR"], c.spec.environment["MASTER_PORT"]) for c in children} == {
        ("10.0.0.6", "29502")}


async def test_a_tensorflow_gang_s_block_avoids_a_port_held_on_a_node_other_than_its_rank_0(store: Store) -> None:
    ddp, tf_gang = await submit(store), await submit(store, spec_from_pb(tf_pb(3, 1, 2)))
    await store.assign_gang(ddp, [("n2", ()), ("n3", ())], detail="placed",
                            rendezvous=[member("10.0.0.6"), member("10.0.0.7")])

    _, children = await store.assign_gang(tf_gang, [("n1", ()), ("n2", ())], detail="placed",
                                          rendezvous=[member("10.0.0.5"), member("10.0.0.6")])

    assert {c.spec.environment["MASTER_PORT"] for c in children} == {"29501"}


async def test_the_block_fits_in_every_member_s_range(store: Store) -> None:
    tf_gang = await submit(store, spec_from_pb(tf_pb(3, 1, 2)))

    _, children = await store.assign_gang(tf_gang, [("n1", ()), ("n2", ())], detail="placed",
                                          rendezvous=[member("10.0.0.5", 29500, 29999),
                                                      member("10.0.0.6", 29600, 29700)])

    assert {c.spec.environment["MASTER_PORT"] for c in children} == {"29600"}


async def test_a_tensorflow_gang_whose_block_fits_no_member_s_range_is_refused(store: Store) -> None:
    tf_gang = await submit(store, spec_from_pb(tf_pb(3, 1, 2)))

    with pytest.raises(Conflict, match=re.escape("no block of 2 rendezvous ports free on every node")):
        await store.assign_gang(tf_gang, [("n1", ()), ("n2", ())], detail="placed",
                                rendezvous=[member("10.0.0.5", 29500, 29999), member("10.0.0.6", 29600, 29600)])
    (queued,) = await store.queued()
    assert queued.id == tf_gang
