"""The agent's enums as the wire has them: `Reason.CUT_OFF` is `REASON_CUT_OFF`. The one place the agent
converts them; tests/test_vocabulary.py proves every agent reason has its wire value.
Must not: hold logic."""

from __future__ import annotations

from typing import cast

from agent.runmodel import Reason
from protos import runyard_pb2 as pb

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
