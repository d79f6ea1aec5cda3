"""MLflow's search grammar, parsed and compiled to SQL over the head's tables: what `mlflow.search_runs` sends as
`filter` and `order_by`, and `mlflow.search_experiments`'s filter.

A filter is comparisons joined by AND (`metrics.loss < 0.5 and params.lr = '0.1'`): a tokenizer, a parser to a
list of `Comparison`s (the AST: a conjunction is all there is), then `compile_runs()` to a WHERE clause and an
ORDER BY over `runs AS r`, every value a `?` parameter (names of metrics, params and tags too). The latest value
of a metric is a correlated subquery on `metrics` (rank 0, highest step, then latest timestamp). Runyard's states
read as MLflow's statuses, its seconds as milliseconds. A filter MLflow would refuse raises `SearchError` with
MLflow's message (the API answers it as INVALID_PARAMETER_VALUE, 400).
Must not: do I/O, touch a connection, or know about HTTP.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

METRIC, PARAM, TAG, ATTRIBUTE = "metric", "parameter", "tag", "attribute"
_ENTITY = {
    "metric": METRIC, "metrics": METRIC,
    "parameter": PARAM, "parameters": PARAM, "param": PARAM, "params": PARAM,
    "tag": TAG, "tags": TAG,
    "attribute": ATTRIBUTE, "attributes": ATTRIBUTE, "attr": ATTRIBUTE, "run": ATTRIBUTE,
}
_IDENTIFIERS = ["metric", "parameter", "tag", "attribute", "dataset"]

METRIC_COMPARATORS = {">", ">=", "!=", "=", "<", "<="}
STRING_COMPARATORS = {"!=", "=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL"}
STRING_ATTRIBUTE_COMPARATORS = {"!=", "=", "LIKE", "ILIKE", "IN", "NOT IN"}
NUMERIC_ATTRIBUTES = {"start_time", "end_time", "created", "Created"}
STRING_ATTRIBUTES = {"run_id", "run_name", "status", "user_id", "artifact_uri", "run name", "Run name", "Run Name"}
SEARCH_ATTRIBUTES = NUMERIC_ATTRIBUTES | STRING_ATTRIBUTES
ORDER_ATTRIBUTES = {"artifact_uri", "end_time", "run_id", "run_name", "start_time", "status", "user_id", "created",
                    "Created"}
LIST_ATTRIBUTES = {"run_id"}
_ALIASES = {"created": "start_time", "Created": "start_time", "run name": "run_name", "Run name": "run_name",
            "Run Name": "run_name"}

MAX_SEARCH_RESULTS = 50_000      # MLflow's SEARCH_MAX_RESULTS_THRESHOLD
DEFAULT_SEARCH_RESULTS = 1_000
MAX_FILTER_CHARS = 10_000

# Runyard's run state -> MLflow's run status.
STATUS = {"Queued": "SCHEDULED", "Preparing": "RUNNING", "Running": "RUNNING", "Finalizing": "RUNNING",
          "Completed": "FINISHED", "Failed": "FAILED", "Canceled": "KILLED"}
_STATUS_SQL = "CASE r.state " + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in STATUS.items()) + " ELSE 'RUNNING' END"

# The tags MLflow clients read that Runyard keeps as columns; they win over a run tag of the same key.
_TAG_COLUMNS = {
    "mlflow.runName": "r.display_name",
    "mlflow.user": "r.submitter",
    "mlflow.parentRunId": "NULLIF(r.parent_id, '')",
}
_ATTRIBUTE_SQL = {
    "run_id": "r.id",
    "run_name": "r.display_name",
    "status": _STATUS_SQL,
    "user_id": "r.submitter",
    "artifact_uri": "'mlflow-artifacts:/' || r.experiment || '/' || r.id || '/artifacts'",
    "start_time": "CAST(COALESCE(r.started_at, r.created_at) * 1000 AS INTEGER)",
    "end_time": "CAST(r.ended_at * 1000 AS INTEGER)",
}
_LATEST_METRIC = ("(SELECT m.value FROM metrics AS m WHERE m.run_id = r.id AND m.key = ? AND m.rank = 0 "
                  "ORDER BY m.step DESC, m.ts DESC LIMIT 1)")
_PARAM = "(SELECT p.value FROM params AS p WHERE p.run_id = r.id AND p.key = ?)"
_TAG = "(SELECT t.value FROM json_each(r.tags) AS t WHERE t.key = ?)"


class SearchError(ValueError):
    """A filter, order or page token MLflow would refuse: INVALID_PARAMETER_VALUE."""


@dataclass(frozen=True, slots=True)
class Comparison:
    kind: str                           # METRIC, PARAM, TAG or ATTRIBUTE
    key: str
    op: str                             # one of the comparators, upper case
    value: float | int | str | tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Order:
    kind: str
    key: str
    ascending: bool = True


@dataclass(frozen=True, slots=True)
class Query:
    where: str                          # conditions over `runs AS r`, joined by AND ("" for none)
    args: list[Any]
    order: str                          # the ORDER BY list, ending with the tie-breaks
    order_args: list[Any]


# --- tokens ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Token:
    kind: str                           # ident, string, number, op, word, lparen, rparen, comma
    text: str                           # as written
    value: Any = None


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.]))
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<ident>(?:[A-Za-z_][\w]*|`[^`]*`|"[^"]*")(?:\.(?:`[^`]*`|"[^"]*"|'[^']*'|[\w.\-]*[\w]))*)
""", re.VERBOSE)
_WORDS = {"AND", "OR", "NOT", "LIKE", "ILIKE", "IN", "IS", "NULL"}


def _unquote(text: str) -> str:
    quote = text[0]
    inner = text[1:-1]
    if quote in "'\"":
        inner = re.sub(r"\\(.)", r"\1", inner).replace(quote * 2, quote)
    return inner


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise SearchError(f"Invalid filter '{text}'. Could not be parsed.")
        at = match.end()
        kind = match.lastgroup or ""
        word = match.group()
        if kind == "space":
            continue
        if kind == "string":
            tokens.append(Token("string", word, _unquote(word)))
        elif kind == "number":
            tokens.append(Token("number", word, float(word) if any(c in word for c in ".eE") else int(word)))
        elif kind == "op":
            tokens.append(Token("op", word, "!=" if word == "<>" else word))
        elif kind == "ident" and word.upper() in _WORDS:
            tokens.append(Token("word", word, word.upper()))
        else:
            tokens.append(Token(kind, word, word))
    return tokens


def _split_identifier(text: str, valid_attributes: set[str]) -> tuple[str, str]:
    """(kind, key) of `metrics.loss`, `params."lr"`, `tags.`a b``, `status`, `attributes.start_time`."""
    if text[0] in "`\"" and text.find(text[0] + ".", 1) > 0:      # `metrics`.`loss`
        cut = text.find(text[0] + ".", 1)
        entity, key = text[1:cut], text[cut + 2:]
    elif text[0] in "`\"":       # a quoted bare name: an attribute
        entity, key = "attribute", text
    elif "." in text:
        entity, key = text.split(".", 1)
    else:
        entity, key = "attribute", text
    kind = _ENTITY.get(entity)
    if kind is None:
        raise SearchError(f"Invalid entity type '{entity}'. Valid values are {_IDENTIFIERS}")
    if key[:1] in "`\"'" and key[-1:] == key[:1] and len(key) >= 2:
        key = key[1:-1]
    if not key:
        raise SearchError(f"Invalid identifier {text!r}. Columns should be specified as 'attribute.<key>', "
                          "'metric.<key>', 'tag.<key>', 'dataset.<key>', or 'param.'.")
    if kind == ATTRIBUTE and key not in valid_attributes:
        raise SearchError(f"Invalid attribute key '{key}' specified. Valid keys are '{sorted(valid_attributes)}'")
    return kind, key


# --- filters ---------------------------------------------------------------------------------------------------

def parse_filter(text: str) -> list[Comparison]:
    """The comparisons of a run filter; an empty filter has none."""
    if len(text) > MAX_FILTER_CHARS:
        raise SearchError(f"the filter is over {MAX_FILTER_CHARS:,} characters")
    tokens = tokenize(text)
    comparisons: list[Comparison] = []
    at = 0
    while at < len(tokens):
        comparison, at = _comparison(text, tokens, at)
        comparisons.append(comparison)
        if at < len(tokens):
            joint = tokens[at]
            if joint.kind != "word" or joint.value != "AND":
                rest = " ".join(t.text for t in tokens[at:])
                raise SearchError(f"Invalid clause(s) in filter string: '{rest}'")
            at += 1
            if at == len(tokens):
                raise SearchError(f"Invalid filter '{text}'. Could not be parsed.")
    return comparisons


def _comparison(text: str, tokens: list[Token], at: int) -> tuple[Comparison, int]:
    first = tokens[at]
    if first.kind != "ident":
        raise SearchError(f"Invalid comparison clause. Expected 'Identifier' found '{first.text}'")
    kind, key = _split_identifier(first.text, SEARCH_ATTRIBUTES)
    key = _ALIASES.get(key, key) if kind == ATTRIBUTE else key
    op, at = _operator(text, tokens, at + 1)
    allowed = (METRIC_COMPARATORS if kind == METRIC
               else STRING_COMPARATORS if kind in (PARAM, TAG)
               else METRIC_COMPARATORS if key in ("start_time", "end_time")
               else STRING_ATTRIBUTE_COMPARATORS)
    if op not in allowed:
        raise SearchError(f"Invalid comparator '{op}' not one of '{allowed}'")
    if op in ("IS NULL", "IS NOT NULL"):
        return Comparison(kind, key, op), at
    if at >= len(tokens):
        raise SearchError(f"Invalid comparison clause. Expected 3 tokens found {len(tokens[:at])}")
    token = tokens[at]
    if op in ("IN", "NOT IN"):
        if key not in LIST_ATTRIBUTES:
            raise SearchError(f"Only {sorted(LIST_ATTRIBUTES)} attributes support comparison with a list of quoted "
                              "string values.")
        values, at = _string_list(text, tokens, at)
        return Comparison(kind, key, op, values), at
    if kind == METRIC or (kind == ATTRIBUTE and key in ("start_time", "end_time")):
        if token.kind != "number":
            what = "metric" if kind == METRIC else f"numeric attribute: {key}"
            raise SearchError(f"Expected numeric value type for {what}. Found {token.text}")
        return Comparison(kind, key, op, token.value), at + 1
    if token.kind == "string" or (token.kind == "ident" and token.text[:1] == '"'):
        value = token.value if token.kind == "string" else _unquote(token.text)
        if kind == ATTRIBUTE and key == "status" and op in ("=", "!="):
            value = value.upper()
        return Comparison(kind, key, op, value), at + 1
    what = "attributes" if kind == ATTRIBUTE else f"{kind} (e.g. 'my-value')"
    if kind == ATTRIBUTE:
        raise SearchError(f"Expected a quoted string value for {what}. Got value {token.text}")
    raise SearchError(f"Expected a quoted string value for {what}. Got value {token.text}")


def _operator(text: str, tokens: list[Token], at: int) -> tuple[str, int]:
    if at >= len(tokens):
        raise SearchError(f"Invalid comparison clause. Expected 3 tokens found {at}")
    token = tokens[at]
    if token.kind == "op":
        return str(token.value), at + 1
    if token.kind == "word":
        words = [t.value for t in tokens[at:at + 3] if t.kind == "word"]
        for phrase in (["IS", "NOT", "NULL"], ["IS", "NULL"], ["NOT", "IN"], ["LIKE"], ["ILIKE"], ["IN"]):
            if words[:len(phrase)] == phrase:
                return " ".join(phrase), at + len(phrase)
    raise SearchError(f"Invalid comparison clause. Expected comparison found '{token.text}'")


def _string_list(text: str, tokens: list[Token], at: int) -> tuple[tuple[str, ...], int]:
    if tokens[at].kind != "lparen":
        raise SearchError(f"While parsing a list in the query, expected a non-empty list of string values, "
                          f"but got {tokens[at].text}")
    values: list[str] = []
    at += 1
    while True:
        if at >= len(tokens) or tokens[at].kind != "string":
            raise SearchError("While parsing a list in the query, expected string value, punctuation, or "
                              f"whitespace, but got different type in list: {text}")
        values.append(str(tokens[at].value))
        at += 1
        if at < len(tokens) and tokens[at].kind == "comma":
            at += 1
            continue
        if at < len(tokens) and tokens[at].kind == "rparen":
            return tuple(values), at + 1
        raise SearchError(f"Invalid filter '{text}'. Could not be parsed.")


def parse_order_by(text: str) -> Order:
    """`metrics.loss DESC`, `attributes.start_time`, `params.lr ASC`."""
    tokens = tokenize(text)
    if not tokens or tokens[0].kind != "ident" or len(tokens) > 2:
        raise SearchError(f"Invalid order_by clause '{text}'. Could not be parsed.")
    ascending = True
    if len(tokens) == 2:
        direction = tokens[1].text.lower()
        if direction not in ("asc", "desc"):
            raise SearchError(f"Invalid ordering key in order_by clause '{text}'.")
        ascending = direction == "asc"
    kind, key = _split_identifier(tokens[0].text, ORDER_ATTRIBUTES)
    return Order(kind, _ALIASES.get(key, key) if kind == ATTRIBUTE else key, ascending)


# --- SQL -------------------------------------------------------------------------------------------------------

def _expression(kind: str, key: str) -> tuple[str, list[Any]]:
    """The SQL of a metric, param, tag or attribute of run `r`, and its parameters."""
    if kind == METRIC:
        return _LATEST_METRIC, [key]
    if kind == PARAM:
        return _PARAM, [key]
    if kind == TAG:
        column = _TAG_COLUMNS.get(key)
        return (column, []) if column else (_TAG, [key])
    return _ATTRIBUTE_SQL[key], []


def like_to_glob(pattern: str) -> str:
    """A LIKE pattern as a GLOB one: LIKE is case-sensitive in MLflow, SQLite's is not (GLOB is)."""
    out = []
    for char in pattern:
        out.append("*" if char == "%" else "?" if char == "_" else f"[{char}]" if char in "*?[]" else char)
    return "".join(out)


def _condition(c: Comparison) -> tuple[str, list[Any]]:
    sql, args = _expression(c.kind, c.key)
    if c.op in ("IS NULL", "IS NOT NULL"):
        return f"{sql} {c.op}", args
    if c.op in ("IN", "NOT IN"):
        assert isinstance(c.value, tuple)
        return f"{sql} {c.op} ({', '.join('?' * len(c.value))})", [*args, *c.value]
    if c.op == "LIKE":
        return f"{sql} GLOB ?", [*args, like_to_glob(str(c.value))]
    if c.op == "ILIKE":
        return f"LOWER({sql}) LIKE LOWER(?)", [*args, c.value]
    return f"{sql} {c.op} ?", [*args, c.value]


def compile_runs(comparisons: list[Comparison], orders: list[Order]) -> Query:
    """The WHERE conditions and ORDER BY of a run search over `runs AS r`. A value that is missing (no such
    metric, param or tag) sorts last either way, as in MLflow; ties go to the newest start, then the id."""
    where: list[str] = []
    args: list[Any] = []
    for comparison in comparisons:
        sql, more = _condition(comparison)
        where.append(sql)
        args += more
    order: list[str] = []
    order_args: list[Any] = []
    seen: set[tuple[str, str]] = set()
    for wanted in [*orders, Order(ATTRIBUTE, "start_time", False), Order(ATTRIBUTE, "run_id", True)]:
        if (wanted.kind, wanted.key) in seen:
            continue
        seen.add((wanted.kind, wanted.key))
        sql, more = _expression(wanted.kind, wanted.key)
        order += [f"{sql} IS NULL", f"{sql} {'ASC' if wanted.ascending else 'DESC'}"]
        order_args += more + more
    return Query(" AND ".join(where), args, ", ".join(order), order_args)


# --- experiments -----------------------------------------------------------------------------------------------

def parse_experiment_filter(text: str) -> list[Comparison]:
    """An experiment filter: comparisons of `name` (=, !=, LIKE, ILIKE) joined by AND."""
    if len(text) > MAX_FILTER_CHARS:
        raise SearchError(f"the filter is over {MAX_FILTER_CHARS:,} characters")
    tokens = tokenize(text)
    found: list[Comparison] = []
    at = 0
    while at < len(tokens):
        first = tokens[at]
        if first.kind != "ident":
            raise SearchError(f"Invalid comparison clause. Expected 'Identifier' found '{first.text}'")
        entity, _, key = first.text.rpartition(".")
        if entity not in ("", "attribute", "attributes", "attr") or key.strip('`"') != "name":
            raise SearchError(f"Invalid attribute key '{first.text}' specified. Valid keys are '['name']'")
        op, at = _operator(text, tokens, at + 1)
        if op not in ("=", "!=", "LIKE", "ILIKE"):
            raise SearchError(f"Invalid comparator '{op}' not one of '{{'=', '!=', 'LIKE', 'ILIKE'}}'")
        if at >= len(tokens) or tokens[at].kind != "string":
            raise SearchError(f"Expected a quoted string value for attributes. Got value "
                              f"{tokens[at].text if at < len(tokens) else ''}")
        found.append(Comparison(ATTRIBUTE, "name", op, tokens[at].value))
        at += 1
        if at < len(tokens):
            if tokens[at].kind != "word" or tokens[at].value != "AND" or at + 1 == len(tokens):
                raise SearchError(f"Invalid clause(s) in filter string: '{' '.join(t.text for t in tokens[at:])}'")
            at += 1
    return found


def compile_experiments(comparisons: list[Comparison]) -> tuple[str, list[Any]]:
    """Conditions over `experiments AS e`."""
    where: list[str] = []
    args: list[Any] = []
    for c in comparisons:
        if c.op == "LIKE":
            where.append("e.name GLOB ?")
            args.append(like_to_glob(str(c.value)))
        elif c.op == "ILIKE":
            where.append("LOWER(e.name) LIKE LOWER(?)")
            args.append(c.value)
        else:
            where.append(f"e.name {c.op} ?")
            args.append(c.value)
    return " AND ".join(where), args


# --- paging ----------------------------------------------------------------------------------------------------

def max_results(value: object, default: int = DEFAULT_SEARCH_RESULTS, cap: int = MAX_SEARCH_RESULTS) -> int:
    """A request's max_results, checked as MLflow checks it."""
    if value is None or value == "":
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise SearchError(f"Invalid value {value!r} for parameter 'max_results' supplied.") from None
    if number <= 0 or number > cap:
        raise SearchError(f"Invalid value {number} for parameter 'max_results' supplied. It must be a positive "
                          f"integer at most {cap}")
    return number


def page_token(offset: int) -> str:
    """An opaque token for the page that starts at `offset`."""
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def page_offset(token: object) -> int:
    """The offset a token names; no token is the first page."""
    if not token:
        return 0
    try:
        found = json.loads(base64.urlsafe_b64decode(str(token).encode()))
        offset = found["offset"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise SearchError(f"Invalid page token, could not base64-decode: {str(token)[:40]!r}") from None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise SearchError("Invalid page token: the offset is not a non-negative integer")
    return offset


def cursor_token(values: list[Any]) -> str:
    """An opaque token carrying where a keyset page ended."""
    return base64.urlsafe_b64encode(json.dumps({"after": values}).encode()).decode()


def cursor(token: object, size: int) -> list[Any] | None:
    """The position a `cursor_token` carries (`size` values); None for no token."""
    if not token:
        return None
    try:
        found = json.loads(base64.urlsafe_b64decode(str(token).encode()))["after"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise SearchError(f"Invalid page token, could not base64-decode: {str(token)[:40]!r}") from None
    if not isinstance(found, list) or len(found) != size or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in found):
        raise SearchError("Invalid page token")
    return found
