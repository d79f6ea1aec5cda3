"""The agent's enums and values as the wire has them: `Reason.CUT_OFF` is `REASON_CUT_OFF`, a run's
`EnvironmentSpec` is an `EnvSpec`. The one place the agent converts them; tests/test_vocabulary.py proves every
agent reason has its wire value.
Must not: hold logic."""

from __future__ import annotations

from typing import cast

from agent.runmodel import Reason
from protos import runyard_pb2 as pb
from runyard.envspec import EnvSpec

_PREFIX = "REASON_"


def reason_to_pb(reason: Reason | None) -> pb.Reason:
    """The wire value of a reason; None (a clean exit) is the unspecified value."""
    # The generated stubs type Value() as a plain int; it is one of this enum's values.
    return cast(pb.Reason, pb.Reason.Value(_PREFIX + reason.name)) if reason else pb.REASON_UNSPECIFIED


def reason_from_pb(value: int) -> Reason | None:
    """A stop reason from the head: unspecified means a user's cancel; None when this agent does not know it."""
    if not value:
        return Reason.CANCELED_BY_USER
    try:
        return Reason[pb.Reason.Name(value).removeprefix(_PREFIX)]
    except (KeyError, ValueError):
        return None


def env_spec_from_pb(env: pb.EnvironmentSpec) -> EnvSpec:
    """A run's environment as the head normalized it; `EnvSpec().empty` when the run declares none."""
    return EnvSpec(python=env.python, pip=tuple(env.pip), index_url=env.index_url,
                   extra_index_urls=tuple(env.extra_index_urls), find_links=tuple(env.find_links),
                   conda=tuple(env.conda), channels=tuple(env.channels), image=env.image)
