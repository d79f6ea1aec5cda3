"""Runyard: a self-hosted run scheduler for machine-learning training.

The package root holds only the in-script SDK (stdlib only), so that `from runyard import Run` works inside a
run where none of Runyard's dependencies are installed. The CLI and everything that needs them live in
submodules and are imported from there.
"""

from runyard.sdk import Run

__all__ = ["Run"]
