"""Multi-node runs: what the parent does given its children (one per node). Pure; `react.follow_gang` uses it.

    children                                   parent
    all started (Running, Finalizing, done)    Preparing -> Running
    all Completed                              -> Completed
    one Failed or Canceled                     -> Failed, reason sibling_failed (node_lost if the child was lost);
                                                  live siblings are stopped
    all ended after the user canceled          -> Canceled, reason canceled_by_user

A gang's rank-0 node hosts the rendezvous: at placement the head gives the gang a MASTER_PORT, and puts it with
MASTER_ADDR (the rank-0 node's advertised address) in every child's environment (`child_environment`). A run holds
the block of ports [MASTER_PORT, MASTER_PORT + `port_width`) on every node it runs on: a tensorflow run's processes
listen there at MASTER_PORT + their index on the node, any other run's rank 0 at MASTER_PORT. The gang's
MASTER_PORT is the lowest port whose block fits in every member node's rendezvous range and overlaps no block of
another live run on any member node (`free_block`).

A lost child is not requeued on its own (its siblings would wait for it forever): it fails with `node_lost`, its
siblings are stopped, and the whole gang is requeued as the parent's attempt N+1 with new children, within the
parent's retry budget (else the parent fails). Only the children of the parent's current attempt count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scheduler.core.lifecycle import TERMINAL, DesiredState, Reason, RunState, Trigger
from scheduler.model import ATTEMPT_PROPERTY, RANK_PROPERTY, Distribution, RunRecord, RunSpec

_STARTED = frozenset({RunState.RUNNING, RunState.FINALIZING, RunState.COMPLETED})


@dataclass(frozen=True, slots=True)
class Step:
    triggers: tuple[Trigger, ...] = ()      # applied to the parent in order
    reason: Reason | None = None
    stop_siblings: bool = False


def step(parent: RunState, desired: DesiredState, children: Sequence[RunState]) -> Step:
    """What the parent of a gang does next, given its children's states."""
    if parent in TERMINAL or parent is RunState.QUEUED or not children:
        return Step()
    if desired is DesiredState.STOP:
        done = all(c in TERMINAL for c in children)
        return Step((Trigger.CANCEL,), Reason.CANCELED_BY_USER) if done else Step()
    if any(c in (RunState.FAILED, RunState.CANCELED) for c in children):
        return Step((Trigger.FAIL,), Reason.SIBLING_FAILED, stop_siblings=True)
    start = (Trigger.START,) if parent is RunState.PREPARING and all(c in _STARTED for c in children) else ()
    if all(c is RunState.COMPLETED for c in children):
        return Step(start + (Trigger.COMPLETE,))
    return Step(start)


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Where a gang's processes meet: the rank-0 node's address and a port on it."""

    address: str
    port: int


def port_width(spec: RunSpec) -> int:
    """How many ports from MASTER_PORT up a run's processes listen on, on each of its nodes: one per process of a
    tensorflow run (N per node), else one (the rendezvous of rank 0)."""
    return max(1, spec.procs_per_node) if spec.distribution is Distribution.TENSORFLOW else 1


def free_block(used: Iterable[tuple[int, int]], low: int, high: int, width: int) -> int | None:
    """The lowest port p with [p, p + width) inside [low, high] that overlaps none of the `used` blocks, each
    (first port, width); None when no such block fits."""
    start = low
    # Blocks in order of their first port: each one that overlaps the candidate pushes it past its end; once a
    # block begins at or after the candidate's end, so do all later ones.
    for first, taken in sorted(used):
        if first >= start + width:
            break
        start = max(start, first + taken)
    return start if start + width - 1 <= high else None


def child_environment(spec: RunSpec, rank: int, nodes: int, rendezvous: Rendezvous | None,
                      addresses: Sequence[str] = ()) -> dict[str, str]:
    """The variables the head adds to node `rank`'s child: NODE_RANK, NNODES, NPROC_PER_NODE, WORLD_SIZE (nodes
    times processes per node), MASTER_ADDR/MASTER_PORT when the gang has a rendezvous, and RUNYARD_NODE_ADDRESSES
    (every node's advertised address, comma-separated in rank order; an MPI run's hostfile) when given."""
    env = {"NODE_RANK": str(rank), "NNODES": str(nodes), "NPROC_PER_NODE": str(spec.procs_per_node),
           "WORLD_SIZE": str(nodes * spec.procs_per_node)}
    if rendezvous is not None:
        env.update(MASTER_ADDR=rendezvous.address, MASTER_PORT=str(rendezvous.port))
    if addresses:
        env["RUNYARD_NODE_ADDRESSES"] = ",".join(addresses)
    return env


def is_gang_parent(run: RunRecord) -> bool:
    return run.spec.instance_count > 1


def node_rank(child: RunRecord) -> int:
    return int(child.properties.get(RANK_PROPERTY, 0))


def current_children(parent: RunRecord, runs: Iterable[RunRecord]) -> list[RunRecord]:
    """The children of the parent's current attempt among `runs`, by rank."""
    mine = [r for r in runs if r.parent_id == parent.id and r.properties.get(ATTEMPT_PROPERTY) == str(parent.attempt)]
    return sorted(mine, key=node_rank)
