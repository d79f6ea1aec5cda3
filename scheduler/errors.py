"""Errors of the head. Each maps to exactly one gRPC status code at the service boundary (`auth.py`, which holds
the mapping: the errors themselves know nothing of gRPC, so the store and the cores can raise them).

    HeadError                       root; the docstring of each class says what it means
    ├── Unauthenticated             UNAUTHENTICATED: no token, or not a valid one
    ├── PermissionDenied            PERMISSION_DENIED: valid credential, wrong kind (a node token on the client API)
    ├── NotFound                    NOT_FOUND: no such run or node in the caller's workspace
    ├── InvalidArgument             INVALID_ARGUMENT: a request the head will never accept as it is
    ├── FailedPrecondition          FAILED_PRECONDITION: not now (e.g. snapshot not uploaded, stale attempt)
    ├── AlreadyExists               ALREADY_EXISTS: a node name held by a live agent
    ├── ResourceExhausted           RESOURCE_EXHAUSTED: over a size cap
    │   └── DiskFull                RESOURCE_EXHAUSTED: the head's disk is full (SQLite or a file write)
    └── StartupRefused              the head will not start on this data dir (never reaches a client)
"""

from __future__ import annotations


ECHO_CHARS = 40     # what a refusal echoes of a caller's input, at most


def shown(text: str) -> str:
    """A caller's input as a refusal may quote it: whole when short, else its start and how long it was."""
    return repr(text) if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]!r}… ({len(text)} characters)"


class HeadError(Exception):
    """The head refused a request."""


class Unauthenticated(HeadError):
    """Missing or invalid token."""


class PermissionDenied(HeadError):
    """The credential is valid but not for this call."""


class NotFound(HeadError):
    """No such object in the caller's workspace."""


class InvalidArgument(HeadError):
    """The request is malformed or out of range."""


class FailedPrecondition(HeadError):
    """The request is valid but not in the current state."""


class AlreadyExists(HeadError):
    """The name is taken by something live."""


class ResourceExhausted(HeadError):
    """A size cap was hit or the head's disk is full."""


class DiskFull(ResourceExhausted):
    """The head's disk is full."""

    def __init__(self) -> None:
        super().__init__("the head's disk is full; free space on the head and retry")


class StartupRefused(HeadError):
    """The head refuses to start on this data directory."""
