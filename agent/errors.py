"""Errors of the node agent. The docstring of each class says what it means; `str(err)` is one line for a person.

    AgentError                      root
    ├── JoinRefused                 the head refused the join token, or there is none: retrying cannot help
    ├── NodeNameTaken               another live agent holds this node name (ALREADY_EXISTS from the head)
    ├── ContainmentUnavailable      the configured `run_containment` cannot work on this machine
    ├── UnsafeDirectory             a directory the agent must keep its own is a link, someone else's, open
    ├── CannotStart                 a run's command could not be started (not found, not executable)
    ├── NoRunUser                   no user to run an attempt as (range exhausted, root refused, no setpriv)
    ├── EnvironmentUnavailable      a run's environment could not be had (its spec refused, or the node failed)
    └── InvalidTransition           the run model got an event its current state does not accept (a bug)

The first four end the agent with exit status 2 and one line on stderr (`app.main`); the rest stay inside one
attempt and become its report.
"""

from __future__ import annotations


class AgentError(Exception):
    """Something went wrong in the node agent."""


class JoinRefused(AgentError):
    """The head refused the join token: nothing this agent can fix by retrying."""


class NodeNameTaken(AgentError):
    """Another live agent holds this node name; the message is the head's."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class ContainmentUnavailable(AgentError):
    """The configured way of containing a run's process tree is not available on this machine."""


class UnsafeDirectory(AgentError):
    """A directory the agent must keep its own (the run root, the uid claims) is not safe to use; the message
    names it and says why."""


class NoRunUser(AgentError):
    """There is no user to run this attempt as; the message says what to change in the agent's config."""


class CannotStart(AgentError):
    """The command of a run could not be started; the message says why, for the run's log."""


class EnvironmentUnavailable(AgentError):
    """A run's environment could not be built; `detail` says why, with the builder's last lines. `node_fault`:
    the node failed under the build (its disk, a missing builder or interpreter), not the spec."""

    def __init__(self, detail: str, *, node_fault: bool = False) -> None:
        self.detail = detail
        self.node_fault = node_fault
        super().__init__(detail)


class InvalidTransition(AgentError):
    """The run model does not accept this event in its current state."""

    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"{event} is not accepted in state {state}")
