"""Errors of the node agent. The docstring of each class says what it means; `str(err)` is one line for a person.

    AgentError                      root
    └── InvalidTransition           the run model got an event its current state does not accept (a bug)

An InvalidTransition stays inside one attempt and becomes its report.
"""

from __future__ import annotations


class AgentError(Exception):
    """Something went wrong in the node agent."""


class InvalidTransition(AgentError):
    """The run model does not accept this event in its current state."""

    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"{event} is not accepted in state {state}")
