"""MLflow's search grammar: filters and orders parsed (table-tested, MLflow's messages for the bad ones), then
compiled and run against the head's real schema in SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler import mlflow_search as s
from scheduler.mlflow_search import ATTRIBUTE, METRIC, PARAM, TAG, Comparison, Order, SearchError

SCHEMA = Path(__file__).resolve().parent.parent / "scheduler" / "sql" / "schema.sql"


@pytest.mark.parametrize("text, expected", [
    ("", []),
    ("metrics.loss < 0.5", [Comparison(METRIC, "loss", "<", 0.5)]),
    ("metric.acc >= 1", [Comparison(METRIC, "acc", ">=", 1)]),
    ("metrics.loss > -1e-3", [Comparison(METRIC, "loss", ">", -0.001)]),
    ("params.lr = '0.1'", [Comparison(PARAM, "lr", "=", "0.1")]),
    ('param.lr != "0.1"', [Comparison(PARAM, "lr", "!=", "0.1")]),
    ("parameters.`my key` LIKE 'a%'", [Comparison(PARAM, "my key", "LIKE", "a%")]),
    ("tags.team ILIKE '%CV%'", [Comparison(TAG, "team", "ILIKE", "%CV%")]),
    ("tags.mlflow.runName = 'x'", [Comparison(TAG, "mlflow.runName", "=", "x")]),
    ('tags."mlflow.user" = \'ana\'', [Comparison(TAG, "mlflow.user", "=", "ana")]),
    ("tags.note IS NULL", [Comparison(TAG, "note", "IS NULL")]),
    ("params.lr is not null", [Comparison(PARAM, "lr", "IS NOT NULL")]),
    ("attributes.status = 'finished'", [Comparison(ATTRIBUTE, "status", "=", "FINISHED")]),
    ("status != 'FAILED'", [Comparison(ATTRIBUTE, "status", "!=", "FAILED")]),
    ("attributes.run_name = 'it''s'", [Comparison(ATTRIBUTE, "run_name", "=", "it's")]),
    ("run.start_time >= 1700000000000", [Comparison(ATTRIBUTE, "start_time", ">=", 1700000000000)]),
    ("attr.end_time < 5", [Comparison(ATTRIBUTE, "end_time", "<", 5)]),
    ("created > 3", [Comparison(ATTRIBUTE, "start_time", ">", 3)]),
    ("attributes.run_id IN ('a', 'b')", [Comparison(ATTRIBUTE, "run_id", "IN", ("a", "b"))]),
    ("attributes.run_id NOT IN ('a')", [Comparison(ATTRIBUTE, "run_id", "NOT IN", ("a",))]),
    ("`metrics`.`loss` <> 2", [Comparison(METRIC, "loss", "!=", 2)]),
    ("metrics.loss<0.5 AND params.lr='0.1' and tags.t = 'x'",
     [Comparison(METRIC, "loss", "<", 0.5), Comparison(PARAM, "lr", "=", "0.1"), Comparison(TAG, "t", "=", "x")]),
])
def test_filters_parse(text: str, expected: list[Comparison]) -> None:
    assert s.parse_filter(text) == expected


@pytest.mark.parametrize("text, message", [
    ("metrics.loss < 'x'", "Expected numeric value type for metric. Found 'x'"),
    ("params.lr = 0.1", "Expected a quoted string value for parameter (e.g. 'my-value'). Got value 0.1"),
    ("tags.t > 'x'", "Invalid comparator '>' not one of"),
    ("metrics.loss LIKE 1", "Invalid comparator 'LIKE' not one of"),
    ("attributes.run_name IN ('a')", "Only ['run_id'] attributes support comparison with a list"),
    ("attributes.start_time = 'x'", "Expected numeric value type for numeric attribute: start_time. Found 'x'"),
    ("attributes.nope = 'x'", "Invalid attribute key 'nope' specified. Valid keys are"),
    ("things.x = 'y'", "Invalid entity type 'things'. Valid values are"),
    ("metrics.loss < 1 OR metrics.loss > 2", "Invalid clause(s) in filter string: 'OR metrics.loss > 2'"),
    ("metrics.loss < 1 AND", "Could not be parsed"),
    ("metrics.loss", "Expected 3 tokens"),
    ("metrics.loss <", "Expected 3 tokens"),
    ("'x' = metrics.loss", "Expected 'Identifier' found ''x''"),
    ("metrics.loss ~ 1", "Could not be parsed"),
    ("attributes.run_id IN ('a', 1)", "expected string value"),
    ("attributes.run_id IN 'a'", "expected a non-empty list"),
])
def test_bad_filters_get_mlflows_messages(text: str, message: str) -> None:
    with pytest.raises(SearchError) as refused:
        s.parse_filter(text)
    assert message in str(refused.value)


@pytest.mark.parametrize("text, expected", [
    ("metrics.loss", Order(METRIC, "loss", True)),
    ("metrics.loss DESC", Order(METRIC, "loss", False)),
    ("params.lr asc", Order(PARAM, "lr", True)),
    ("tags.`a b` DESC", Order(TAG, "a b", False)),
    ("attributes.start_time DESC", Order(ATTRIBUTE, "start_time", False)),
    ("run_name", Order(ATTRIBUTE, "run_name", True)),
    ("created", Order(ATTRIBUTE, "start_time", True)),
])
def test_orders_parse(text: str, expected: Order) -> None:
    assert s.parse_order_by(text) == expected


@pytest.mark.parametrize("text, message", [
    ("metrics.loss sideways", "Invalid ordering key in order_by clause"),
    ("metrics.loss DESC extra", "Could not be parsed"),
    ("attributes.nope", "Invalid attribute key 'nope'"),
    ("'x'", "Could not be parsed"),
])
def test_bad_orders(text: str, message: str) -> None:
    with pytest.raises(SearchError) as refused:
        s.parse_order_by(text)
    assert message in str(refused.value)


@pytest.mark.parametrize("text, expected", [
    ("name = 'a'", [Comparison(ATTRIBUTE, "name", "=", "a")]),
    ("attribute.name LIKE 'mn%' and name != 'x'",
     [Comparison(ATTRIBUTE, "name", "LIKE", "mn%"), Comparison(ATTRIBUTE, "name", "!=", "x")]),
])
def test_experiment_filters(text: str, expected: list[Comparison]) -> None:
    assert s.parse_experiment_filter(text) == expected


@pytest.mark.parametrize("text", ["tags.x = 'a'", "name > 'a'", "name = 1", "name = 'a' OR name = 'b'"])
def test_bad_experiment_filters(text: str) -> None:
    with pytest.raises(SearchError):
        s.parse_experiment_filter(text)


def test_paging_values() -> None:
    assert s.page_offset(s.page_token(120)) == 120 and s.page_offset("") == 0
    assert s.cursor(s.cursor_token([3, 1.5, 1, 7]), 4) == [3, 1.5, 1, 7] and s.cursor(None, 4) is None
    for bad in ("%%%", "bm90IGpzb24=", s.page_token(-1)):
        with pytest.raises(SearchError):
            s.page_offset(bad)
    with pytest.raises(SearchError):
        s.cursor(s.cursor_token([1, 2]), 4)
    assert s.max_results(None) == 1000 and s.max_results("7") == 7 and s.max_results(50_000) == 50_000
    for bad in (0, 50_001, "x", -3):
        with pytest.raises(SearchError):
            s.max_results(bad)


@pytest.mark.parametrize("pattern, text, matches", [
    ("a%", "abc", True), ("a%", "Abc", False), ("a_c", "abc", True), ("a_c", "abbc", False),
    ("%[x]%", "a[x]b", True), ("%*%", "a*b", True), ("%*%", "ab", False), ("100%", "100", True),
])
def test_like_is_case_sensitive_and_literal_outside_its_wildcards(pattern: str, text: str, matches: bool) -> None:
    with sqlite3.connect(":memory:") as db:
        assert bool(db.execute("SELECT ? GLOB ?", (text, s.like_to_glob(pattern))).fetchone()[0]) is matches


# --- compiled, against the real schema --------------------------------------------------------------------------

RUNS = [
    # id, state, display name, submitter, parent, created, started, ended, tags
    ("r1", "Completed", "alpha", "ana", None, 10.0, 11.0, 20.0, {"team": "cv", "note": "x"}),
    ("r2", "Failed", "beta", "bob", None, 12.0, 13.0, 30.0, {"team": "CV"}),
    ("r3", "Running", "gamma", "ana", "r1", 14.0, 15.0, None, {"team": "nlp"}),
    ("r4", "Queued", "delta", "bob", None, 16.0, None, None, {}),
]
METRICS = [
    # run, rank, seq, key, step, value, ts
    ("r1", 0, 1, "loss", 0, 0.9, 1.0), ("r1", 0, 2, "loss", 1, 0.3, 2.0),
    ("r2", 0, 1, "loss", 0, 0.2, 1.0), ("r2", 0, 2, "loss", 5, 0.6, 2.0), ("r2", 1, 1, "loss", 9, 0.0, 3.0),
    ("r3", 0, 1, "loss", 2, 0.4, 1.0), ("r3", 0, 2, "loss", 2, 0.1, 2.0),     # same step: the later point wins
]
PARAMS = [("r1", "lr", "0.1"), ("r2", "lr", "0.1"), ("r3", "lr", "0.01"), ("r1", "opt", "adam")]


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    connection.executescript(SCHEMA.read_text())
    for rid, state, name, who, parent, created, started, ended, tags in RUNS:
        connection.execute(
            "INSERT INTO runs (id, workspace, experiment, parent_id, display_name, state, spec, snapshot_sha256, "
            "tags, created_at, started_at, ended_at, submitter) VALUES (?, 'w', 'e', ?, ?, ?, '{}', '', ?, ?, ?, ?, ?)",
            (rid, parent, name, state, json.dumps(tags), created, started, ended, who))
    connection.execute(
        "INSERT INTO runs (id, workspace, experiment, display_name, state, spec, snapshot_sha256, created_at) "
        "VALUES ('elsewhere', 'w2', 'e', 'alpha', 'Completed', '{}', '', 1.0)")
    for rid, rank, seq, key, step, value, ts in METRICS:
        connection.execute("INSERT OR IGNORE INTO metric_series (run_id, key, rank) VALUES (?, ?, ?)", (rid, key, rank))
        connection.execute("INSERT INTO metric_points (series, step, ts, attempt, seq, value) SELECT id, ?, ?, 1, ?, ? "
                           "FROM metric_series WHERE run_id = ? AND key = ? AND rank = ?",
                           (step, ts, seq, value, rid, key, rank))
    connection.executemany("INSERT INTO params (run_id, key, value) VALUES (?, ?, ?)", PARAMS)
    yield connection
    connection.close()


def search(db: sqlite3.Connection, text: str, orders: tuple[str, ...] = ()) -> list[str]:
    query = s.compile_runs(s.parse_filter(text), [s.parse_order_by(o) for o in orders])
    sql = "SELECT r.id FROM runs AS r WHERE r.workspace = 'w'" + (f" AND {query.where}" if query.where else "")
    return [row[0] for row in db.execute(sql + f" ORDER BY {query.order}", [*query.args, *query.order_args])]


@pytest.mark.parametrize("text, expected", [
    ("", ["r4", "r3", "r2", "r1"]),                         # newest start first
    ("metrics.loss < 0.5", ["r3", "r1"]),                   # the latest point of rank 0 per run
    ("metrics.loss = 0.6", ["r2"]),
    ("metrics.loss >= 0.3 and params.lr = '0.1'", ["r2", "r1"]),
    ("metrics.nothing > 0", []),
    ("params.lr != '0.1'", ["r3"]),                         # a run without the param does not match !=
    ("params.opt IS NULL", ["r4", "r3", "r2"]),
    ("params.opt IS NOT NULL", ["r1"]),
    ("tags.team = 'cv'", ["r1"]),
    ("tags.team LIKE 'c%'", ["r1"]),
    ("tags.team ILIKE 'c%'", ["r2", "r1"]),
    ("tags.note IS NULL", ["r4", "r3", "r2"]),
    ("tags.mlflow.runName = 'beta'", ["r2"]),
    ("tags.mlflow.user = 'ana'", ["r3", "r1"]),
    ("tags.mlflow.parentRunId = 'r1'", ["r3"]),
    ("tags.mlflow.parentRunId IS NULL", ["r4", "r2", "r1"]),
    ("attributes.status = 'FINISHED'", ["r1"]),
    ("attributes.status = 'RUNNING'", ["r3"]),
    ("attributes.status = 'SCHEDULED'", ["r4"]),
    ("attributes.status != 'FAILED'", ["r4", "r3", "r1"]),
    ("attributes.status IN ('FAILED', 'FINISHED')", None),  # refused: lists are for run_id only
    ("attributes.run_name LIKE '%ta'", ["r4", "r2"]),
    ("attributes.run_id IN ('r1', 'r4', 'elsewhere')", ["r4", "r1"]),
    ("attributes.run_id NOT IN ('r1', 'r4')", ["r3", "r2"]),
    ("attributes.start_time >= 13000", ["r4", "r3", "r2"]),  # started, else created; in ms
    ("attributes.start_time > 15500", ["r4"]),
    ("attributes.end_time < 25000", ["r1"]),
    ("attributes.user_id = 'bob'", ["r4", "r2"]),
    ("attributes.artifact_uri = 'mlflow-artifacts:/e/r2/artifacts'", ["r2"]),
])
def test_compiled_filters_select_the_right_runs(db: sqlite3.Connection, text: str, expected: list[str] | None) -> None:
    if expected is None:
        with pytest.raises(SearchError):
            search(db, text)
        return
    assert search(db, text) == expected


@pytest.mark.parametrize("orders, expected", [
    (("metrics.loss ASC",), ["r3", "r1", "r2", "r4"]),      # a run without the metric sorts last either way
    (("metrics.loss DESC",), ["r2", "r1", "r3", "r4"]),
    (("params.lr DESC", "attributes.run_name"), ["r1", "r2", "r3", "r4"]),
    (("attributes.start_time ASC",), ["r1", "r2", "r3", "r4"]),
    (("attributes.end_time DESC",), ["r2", "r1", "r4", "r3"]),
    (("tags.team",), ["r2", "r1", "r3", "r4"]),
    (("attributes.status", "attributes.run_id DESC"), ["r2", "r1", "r3", "r4"]),
])
def test_compiled_orders(db: sqlite3.Connection, orders: tuple[str, ...], expected: list[str]) -> None:
    assert search(db, "", orders) == expected


def test_values_are_parameters_never_sql(db: sqlite3.Connection) -> None:
    hostile = "x'; DROP TABLE runs; --"
    query = s.compile_runs(s.parse_filter(f"params.`{hostile}` = \"{hostile}\" and tags.t LIKE \"{hostile}%\""), [])
    assert hostile not in query.where and "DROP" not in query.where
    assert hostile in query.args
    assert search(db, f"params.lr = \"{hostile}\"") == []
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 5
