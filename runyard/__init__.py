"""Runyard: a self-hosted run scheduler for machine-learning training.

The package root holds only the in-script SDK (stdlib only), so that `from runyard import Run` works inside a
run where none of Runyard's dependencies are installed. The CLI and everything that needs them live in
submodules and are imported from there. `Run` is imported on first use, so that the CLI (`runyard --version`,
`runyard runs`) does not pay for the SDK.
"""

from __future__ import annotations

TYPE_CHECKING = False   # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

    from runyard.sdk import Run

__all__ = ["Run"]


def __getattr__(name: str) -> Any:
    if name == "Run":
        from runyard.sdk import Run

        return Run
    raise AttributeError(f"module 'runyard' has no attribute {name!r}")
