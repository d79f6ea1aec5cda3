"""Errors the runyard client side raises, and the one place the CLI turns them into a line for the user.

    RunyardError                    root; `str(err)` is the one line a user sees
    ├── UsageError                  a mistake of the user's: bad flag, bad job file, unreadable directory
    │   ├── JobFileError            a job, environment, conda or requirements file invalid; carries the YAML
    │   │                           path of the fault (or the line, in the source)
    │   ├── SnapshotTooLarge        the directory is over the snapshot size limit
    │   └── SnapshotTooDeep         a file of the directory lies deeper than the snapshot depth limit
    ├── SnapshotInvalid             an archive that must not be extracted; carries the offending entry or WHOLE
    ├── ConfigError                 no head address or token configured
    ├── DataDirInUse                another process holds the data directory; carries its PID
    └── HeadError                   the head refused or failed a call; carries the gRPC status code name
        ├── AuthenticationFailed    UNAUTHENTICATED
        ├── NotFound                NOT_FOUND
        ├── InvalidArgument         INVALID_ARGUMENT
        ├── FailedPrecondition      FAILED_PRECONDITION
        ├── ResourceExhausted       RESOURCE_EXHAUSTED
        └── Unavailable             UNAVAILABLE / DEADLINE_EXCEEDED: the head cannot be reached

This module is stdlib-only: the in-run SDK may import it where no dependency is installed.
"""

from __future__ import annotations


class RunyardError(Exception):
    """Something went wrong in runyard."""

    exit_code = 1


class UsageError(RunyardError):
    """A mistake in how runyard was called."""

    exit_code = 2


class JobFileError(UsageError):
    """A file that says what to run is invalid: a job file, an environment file, a conda file or a requirements
    file. `source` names the file (and `file:line` for a line of a requirements file), `path` the YAML path."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        self.message = message
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {message}")


class SnapshotTooLarge(UsageError):
    """The directory to snapshot is larger than the limit."""

    def __init__(self, directory: str, size_bytes: int, limit_bytes: int, largest: list[tuple[str, int]]) -> None:
        self.directory = directory
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        self.largest = largest
        biggest = ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in largest[:3])
        super().__init__(
            f"{directory} is {size_bytes / 1e6:.1f} MB, over the snapshot limit of {limit_bytes / 1e6:.0f} MB; "
            f"list large files in .runyardignore (largest: {biggest})"
        )


class SnapshotTooDeep(UsageError):
    """A file of the directory to snapshot lies more path components down than the limit."""

    def __init__(self, directory: str, entry: str, depth: int, limit: int) -> None:
        self.directory = directory
        self.entry = entry
        self.depth = depth
        self.limit = limit
        super().__init__(
            f"{directory}: {entry!r} is {depth} path components deep, over the snapshot limit of {limit}; "
            "move it up or list it in .runyardignore"
        )


class SnapshotInvalid(RunyardError):
    """An archive that must not be extracted: one of its entries, or the archive as a whole (`entry` is `WHOLE`)."""

    WHOLE = "<archive>"

    def __init__(self, entry: str, why: str) -> None:
        self.entry = entry
        self.why = why
        where = "snapshot" if entry == self.WHOLE else f"snapshot entry {entry!r}"
        super().__init__(f"{where} rejected: {why}")


class ConfigError(RunyardError):
    """Runyard is not configured to reach a head."""


class DataDirInUse(RunyardError):
    """Another process holds the lock of this data directory."""

    def __init__(self, directory: str, pid: int | None) -> None:
        self.directory = directory
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"data directory {directory} is in use by {holder} (it holds {directory}/runyard.lock); "
            "stop it first, or choose another data directory"
        )


class HeadError(RunyardError):
    """The head refused or failed a call."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class AuthenticationFailed(HeadError):
    code = "UNAUTHENTICATED"


class NotFound(HeadError):
    code = "NOT_FOUND"


class InvalidArgument(HeadError):
    code = "INVALID_ARGUMENT"


class FailedPrecondition(HeadError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(HeadError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(HeadError):
    code = "UNAVAILABLE"


class CertificateError(RunyardError):
    """A certificate, key or CSR that cannot be used; the message says which and why."""
