"""The closed sets of the head and of the wire name the same members: a state, reason or schedule added on one
side only fails here. The CLI's words for them are the head's values."""

from __future__ import annotations

from enum import StrEnum

import pytest

from runyard import vocabulary
from scheduler.convert import VOCABULARY, from_pb, to_pb

CASES = {kind.__name__: kind for kind in VOCABULARY}


@pytest.mark.parametrize("name", list(CASES))
def test_every_member_has_a_wire_value_and_back(name: str) -> None:
    kind: type[StrEnum] = CASES[name]
    pb_enum, prefix = VOCABULARY[kind]
    wire = {n.removeprefix(prefix) for n, v in pb_enum.items() if v}
    assert wire == {m.name for m in kind}, f"{name}: the proto and the head disagree"
    for member in kind:
        assert from_pb(kind, to_pb(member)) is member


@pytest.mark.parametrize("name", list(CASES))
def test_the_cli_shows_the_heads_words(name: str) -> None:
    kind: type[StrEnum] = CASES[name]
    for member in kind:
        assert vocabulary.word(name, to_pb(member)) == member.value


def test_unspecified_is_none_and_an_unknown_value_is_refused() -> None:
    from scheduler.core.lifecycle import Reason

    assert to_pb(None) == 0 and from_pb(Reason, 0) is None
    with pytest.raises(ValueError):
        from_pb(Reason, 999)


def test_json_output_reads_as_words() -> None:
    from protos import runyard_pb2 as pb
    from runyard import render

    shown = render.as_dict(pb.Run(id="r1", state=pb.RUN_STATE_COMPLETED, reason=pb.REASON_EXIT_CODE,
                                  desired_state=pb.DESIRED_STATE_STOP))
    assert (shown["state"], shown["reason"], shown["desired_state"]) == ("Completed", "exit_code", "stop")


def test_a_state_filter_is_case_insensitive_and_names_the_choices() -> None:
    from protos import runyard_pb2 as pb

    assert vocabulary.run_state("running") == vocabulary.run_state("Running") == pb.RUN_STATE_RUNNING
    with pytest.raises(ValueError, match="one of Queued, Preparing"):
        vocabulary.run_state("sleeping")


def test_every_agent_reason_has_its_wire_value() -> None:
    from agent.runmodel import Reason as AgentReason
    from agent.wire import reason_from_pb, reason_to_pb
    from scheduler.core.lifecycle import Reason

    for reason in AgentReason:
        assert reason_from_pb(reason_to_pb(reason)) is reason
        assert Reason(reason.value).name == reason.name, "the head knows every reason an agent reports"
