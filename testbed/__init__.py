"""Real Runyard processes on loopback for the end-to-end tests and the benchmarks: a head, agents, and the CLI.

It starts `python -m scheduler`, `python -m agent` and `python -m runyard` as subprocesses and talks to them only
through files and the CLI. Must not: import `scheduler`, `agent` or `runyard` (it drives them from outside), nor
`tests` or `bench` (both use it). An import-linter contract in `pyproject.toml` holds this.
"""
