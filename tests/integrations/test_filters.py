"""The store's filter language: SQL (local search) and Python (checks of relay results) agree,
and the relay receives only clauses it evaluates the same way."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commander_os.integrations._filters import equality_filter_sql, store_filter_sql
from commander_os.integrations.langgraph._network import matches, relay_where
from commander_os.protocol.sqlite_filters import filter_sql, json_path

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([0.5, 1.0, -2.0]),
    st.sampled_from(["", "a", "b", "1"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
    ),
    max_leaves=6,
)
documents = st.dictionaries(st.sampled_from(["a", "b", "c", "x.y"]), json_values, max_size=4)
operators = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"])
conditions = st.recursive(
    st.one_of(
        json_values,
        st.dictionaries(operators, st.one_of(scalars, json_values), min_size=1, max_size=2),
    ),
    lambda inner: st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, min_size=1, max_size=2),
    max_leaves=4,
)
filters = st.dictionaries(st.sampled_from(["a", "b", "c", "x.y"]), conditions, max_size=2)


@pytest.fixture(scope="module")
def conn() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE doc (v TEXT)")
    yield connection
    connection.close()


def sql_matches(conn: sqlite3.Connection, document: dict[str, Any], flt: dict[str, Any]) -> bool:
    conn.execute("DELETE FROM doc")
    conn.execute("INSERT INTO doc VALUES (?)", (orjson.dumps(document).decode(),))
    predicate, params = store_filter_sql(flt, column="v")
    return bool(conn.execute(f"SELECT {predicate} FROM doc", params).fetchone()[0])


def outcome(check: Any) -> Any:
    try:
        return check()
    except TypeError:
        return TypeError  # a range compared with a value that is neither number nor string


@settings(max_examples=400, deadline=None)
@given(document=documents, flt=filters)
def test_sql_and_python_agree(conn: sqlite3.Connection, document: dict[str, Any], flt: Any) -> None:
    local = outcome(lambda: sql_matches(conn, document, flt))
    assert local == outcome(lambda: matches(document, flt))


def test_examples_of_the_semantics(conn: sqlite3.Connection) -> None:
    doc = {"a": 1, "b": True, "c": None, "n": {"x": [1, "y"]}}
    assert sql_matches(conn, doc, {"a": 1.0})
    assert matches(doc, {"a": 1.0})
    assert not sql_matches(conn, doc, {"b": 1})
    assert not matches(doc, {"b": 1})
    assert sql_matches(conn, doc, {"c": None, "missing": None})
    assert sql_matches(conn, doc, {"missing": {"$ne": 3}})
    assert not sql_matches(conn, doc, {"missing": {"$gt": 0}})
    assert sql_matches(conn, doc, {"n": {"x": [1, "y"]}})
    assert not sql_matches(conn, doc, {"n": {"x": [1]}})
    assert sql_matches(conn, doc, {"n": {"$eq": {"x": [1, "y"]}}})
    assert not sql_matches(conn, doc, {"n": {"$eq": {}}})


def test_equality_filter_is_exact(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM doc")
    conn.execute(
        "INSERT INTO doc VALUES (?)", (orjson.dumps({"a": {"b": 1, "extra": 2}}).decode(),)
    )
    predicate, params = equality_filter_sql({"a": {"b": 1}, "c": None}, column="v")
    assert conn.execute(f"SELECT {predicate} FROM doc", params).fetchone()[0] == 0
    predicate, params = equality_filter_sql({"a": {"extra": 2, "b": 1.0}}, column="v")
    assert conn.execute(f"SELECT {predicate} FROM doc", params).fetchone()[0] == 1


def test_json_path_quotes_keys_and_refuses_what_sqlite_cannot_address() -> None:
    assert json_path(["a", "b.c", 0]) == '$.a."b.c"[0]'
    with pytest.raises(ValueError, match="double quote"):
        json_path(['a"b'])
    with pytest.raises(ValueError, match="unknown filter operator"):
        filter_sql("$.a", "like", "x")


def test_relay_gets_only_clauses_it_evaluates_the_same_way() -> None:
    clauses = relay_where(
        {
            "a": 1,
            "b": None,
            "c": {"$gt": 2, "$ne": "x"},
            "d": {"e": True},
            "f-g": 1,
            "0": 2,
            "l": [1],
        }
    )
    assert clauses == [
        {"field": "value.a", "op": "eq", "value": 1},
        {"field": "value.c", "op": "gt", "value": 2},
        {"field": "value.c", "op": "ne", "value": "x"},
        {"field": "value.d.e", "op": "eq", "value": True},
    ]
