"""The head's decisions as pure functions: the run and node state tables (`lifecycle`, `nodes`), heartbeat
judgement (`heartbeats`), the gang rule (`gangs`), and `react()`, which turns an event and the state it concerns
into a `Plan` (`plan`).

Must not: do I/O, read a clock, or import the store, the services, the sessions, gRPC, protobuf or aiosqlite; the
shells (`reactor`, `reaper`, `dispatch`) read the state, call in here, and commit what comes out. An import-linter
contract in `pyproject.toml` holds this.
"""
