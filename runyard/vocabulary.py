"""The wire's closed sets as people read them: `RUN_STATE_COMPLETED` is shown `Completed`, `REASON_EXIT_CODE`
`exit_code`, exactly the values the head uses (tests/test_vocabulary.py proves it). One place for the CLI.
Must not: import the daemons."""

from __future__ import annotations

from typing import Any

from protos import runyard_pb2 as pb

# protobuf enum -> (prefix of its value names, how a value reads: "title" or "lower")
_ENUMS: dict[str, tuple[Any, str, str]] = {
    "RunState": (pb.RunState, "RUN_STATE_", "title"),
    "Reason": (pb.Reason, "REASON_", "lower"),
    "DesiredState": (pb.DesiredState, "DESIRED_STATE_", "lower"),
    "PendingKind": (pb.PendingKind, "PENDING_KIND_", "lower"),
    "NodeState": (pb.NodeState, "NODE_STATE_", "title"),
    "Schedule": (pb.Schedule, "SCHEDULE_", "lower"),
    "Role": (pb.Role, "ROLE_", "lower"),
}


def _word(name: str, prefix: str, case: str) -> str:
    bare = name.removeprefix(prefix)
    return bare.capitalize() if case == "title" else bare.lower()


# every value name of every enum -> its word ('' for the unspecified ones)
_WORDS: dict[str, str] = {
    name: "" if number == 0 else _word(name, prefix, case)
    for enum, prefix, case in _ENUMS.values() for name, number in enum.items()
}


def word(kind: str, value: int) -> str:
    """How `value` of the enum named `kind` reads: word("RunState", 5) == "Completed"; '' when unspecified."""
    enum, prefix, case = _ENUMS[kind]
    return "" if value == 0 else _word(enum.Name(value), prefix, case)


def run_state(text: str) -> pb.RunState:
    """The RunState value of a word, case-insensitive ('running' -> RUN_STATE_RUNNING); ValueError if none."""
    try:
        # The generated stubs type EnumTypeWrapper.Value() as a plain int, not as the enum it belongs to.
        return pb.RunState.Value("RUN_STATE_" + text.strip().upper())  # type: ignore[return-value]
    except ValueError:
        words = ", ".join(word("RunState", v) for v in pb.RunState.values() if v)
        raise ValueError(f"unknown run state {text!r}; one of {words}") from None


def readable(value: Any) -> Any:
    """A MessageToDict result with every enum value name replaced by its word."""
    if isinstance(value, dict):
        return {k: readable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [readable(v) for v in value]
    if isinstance(value, str):
        return _WORDS.get(value, value)
    return value


TERMINAL = frozenset({pb.RUN_STATE_COMPLETED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELED})
