"""Differential test: ``CommanderStore`` answers like LangGraph's ``InMemoryStore``.

Random sequences of put, delete, get, search (filters, limits, offsets), list_namespaces
(prefix, suffix, wildcards, max_depth, limits, offsets) and mixed batches run on both stores;
every answer must be equal (namespace, key and value; timestamps differ by construction:
InMemoryStore resets ``created_at`` on every put, ours keeps it).

The values keep to the part of the filter language where LangGraph's reference semantics are
defined and JSON-consistent: range operators only on fields that always hold numbers (the
reference raises ``TypeError`` on a missing field), and booleans only in fields compared with
booleans (Python's ``True == 1`` is not JSON's). One quirk of the reference is neutralised:
``InMemoryStore`` keeps its namespaces in a ``defaultdict``, so a get, search or delete of a
namespace that holds nothing creates it, and it is listed (and keeps its place in the search
order) while empty. The reference here gets a mapping that creates a namespace only when an
item is stored in it, and loses it when its last item goes (:func:`reference_store`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.store.base import GetOp, ListNamespacesOp, MatchCondition, Op, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore

from commander_os.integrations import IntegrationStorage
from commander_os.integrations.langgraph import CommanderStore

NAMESPACES = [
    ("a",),
    ("a", "b"),
    ("a", "b", "c"),
    ("a", "b-"),
    ("a-b",),
    ("b",),
    ("b", "x"),
    ("c", "a"),
    ("ü", "x"),
]
LABELS = sorted({label for ns in NAMESPACES for label in ns})
KEYS = ["k1", "k2", "k3", "k 4", "é"]

numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2.0, 1e3]))
texts = st.sampled_from(["", "x", "y", "xy", "Z"])
maybe = st.sampled_from(["missing", "null", "set"])


@st.composite
def values(draw: st.DrawFn) -> dict[str, Any]:
    value: dict[str, Any] = {"n": draw(numbers)}
    for name, inner in (
        ("m", numbers),
        ("s", texts),
        ("flag", st.booleans()),
        ("tags", st.lists(texts, max_size=3)),
        ("meta", st.fixed_dictionaries({"n": numbers, "s": texts})),
    ):
        state = draw(maybe)
        if state == "null":
            value[name] = None
        elif state == "set":
            value[name] = draw(inner)
    return value


range_ops = st.sampled_from(["$gt", "$gte", "$lt", "$lte"])
filters = st.one_of(
    st.builds(lambda op, x: {"n": {op: x}}, range_ops, numbers),
    st.builds(lambda a, b: {"n": {"$gte": a, "$lt": b}}, numbers, numbers),
    st.builds(lambda x: {"n": x}, numbers),
    st.builds(lambda x: {"m": x}, st.one_of(st.none(), numbers)),
    st.builds(lambda x: {"m": {"$ne": x}}, st.one_of(st.none(), numbers)),
    st.builds(lambda x: {"m": {"$eq": x}}, st.one_of(st.none(), numbers)),
    st.builds(lambda x: {"s": x}, st.one_of(st.none(), texts)),
    st.builds(lambda x: {"s": {"$ne": x}}, texts),
    st.builds(lambda x: {"flag": x}, st.one_of(st.none(), st.booleans())),
    st.builds(lambda x: {"tags": x}, st.lists(texts, max_size=2)),
    st.builds(lambda x: {"meta": {"n": x}}, numbers),
    st.builds(lambda op, x: {"meta": {"n": {op: x}}}, range_ops, numbers),
    st.builds(lambda s, n: {"s": s, "n": {"$gt": n}}, texts, numbers),
)
namespaces = st.sampled_from(NAMESPACES)
prefixes = st.sampled_from([(), ("a",), ("a", "b"), ("b",), ("a-b",), ("c",), ("zz",)])
pages = st.tuples(st.integers(0, 6), st.integers(0, 5))
patterns = st.one_of(
    st.none(),
    st.lists(st.sampled_from([*LABELS, "*"]), min_size=1, max_size=3).map(tuple),
)

# TTLs are left out: InMemoryStore does not expire items (test_store.py covers ours).
puts = st.builds(
    lambda ns, key, value: PutOp(ns, key, value), namespaces, st.sampled_from(KEYS), values()
)
deletes = st.builds(lambda ns, key: PutOp(ns, key, None), namespaces, st.sampled_from(KEYS))
gets = st.builds(lambda ns, key: GetOp(ns, key), namespaces, st.sampled_from(KEYS))
searches = st.builds(
    lambda prefix, flt, page: SearchOp(prefix, flt, limit=page[0], offset=page[1]),
    prefixes,
    st.one_of(st.none(), filters),
    pages,
)


@st.composite
def listings(draw: st.DrawFn) -> ListNamespacesOp:
    conditions = []
    for kind in ("prefix", "suffix"):
        path = draw(patterns)
        if path is not None:
            conditions.append(MatchCondition(match_type=kind, path=path))  # type: ignore[arg-type]
    limit, offset = draw(pages)
    depth = draw(st.one_of(st.none(), st.integers(1, 3)))
    return ListNamespacesOp(tuple(conditions), max_depth=depth, limit=limit, offset=offset)


single = st.one_of(puts, puts, deletes, gets, searches, searches, listings())
steps = st.lists(st.one_of(single.map(lambda op: [op]), st.lists(single, min_size=2, max_size=4)))


def comparable(result: Any) -> Any:
    """An answer without timestamps (and without scores, which neither store sets here)."""
    if result is None:
        return None
    if isinstance(result, list):
        return [comparable(item) for item in result]
    if isinstance(result, tuple):
        return result
    return (result.namespace, result.key, result.value)


class _Namespaces(dict[tuple[str, ...], dict[str, Any]]):
    """Namespaces that exist only while they hold items (see the module docstring)."""

    def __missing__(self, namespace: tuple[str, ...]) -> dict[str, Any]:
        return _Unborn(self, namespace)


class _Unborn(dict[str, Any]):
    """An empty namespace that joins its parent when an item is stored in it."""

    def __init__(self, parent: _Namespaces, namespace: tuple[str, ...]) -> None:
        super().__init__()
        self.parent, self.namespace = parent, namespace

    def __setitem__(self, key: str, value: Any) -> None:
        self.parent.setdefault(self.namespace, {})[key] = value


def reference_store() -> InMemoryStore:
    reference = InMemoryStore()
    reference._data = _Namespaces()  # type: ignore[assignment]
    return reference


def drop_empty_namespaces(reference: InMemoryStore) -> None:
    for namespace in [ns for ns, items in reference._data.items() if not items]:
        del reference._data[namespace]


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IntegrationStorage]:
    folder: Path = tmp_path_factory.mktemp("differential")
    store = IntegrationStorage("differential", folder, enable_htpc=False, durability="normal")
    yield store
    store.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps)
def test_same_answers_as_in_memory_store(
    storage: IntegrationStorage, steps: list[list[Op]]
) -> None:
    with storage.transaction() as conn:
        conn.execute("DELETE FROM lg_store")
    ours = CommanderStore(storage)
    reference = reference_store()
    for number, ops in enumerate(steps):
        expected = reference.batch(ops)
        drop_empty_namespaces(reference)
        got = ours.batch(ops)
        assert comparable(got) == comparable(expected), f"step {number}: {ops}"
    everything = SearchOp((), None, limit=1000)
    assert comparable(ours.batch([everything])) == comparable(reference.batch([everything]))


def test_the_generated_sequences_exercise_every_kind_of_answer(storage: IntegrationStorage) -> None:
    # A fixed sequence that must give non-trivial answers, so the property above cannot pass
    # by comparing empty lists only.
    with storage.transaction() as conn:
        conn.execute("DELETE FROM lg_store")
    ours, reference = CommanderStore(storage), reference_store()
    ops: list[Op] = [
        PutOp(("a", "b"), "k1", {"n": 2, "s": "x"}),
        PutOp(("a",), "k2", {"n": 1, "m": None}),
        PutOp(("a-b",), "k3", {"n": 5, "tags": ["x"]}),
        PutOp(("a", "b"), "k4", {"n": -1}),
    ]
    for store in (ours, reference):
        store.batch(ops)
    questions: list[Op] = [
        SearchOp(("a",), {"n": {"$gte": 1}}, limit=10),
        SearchOp((), None, limit=2, offset=1),
        SearchOp((), {"m": None}, limit=10),
        ListNamespacesOp(max_depth=1),
        ListNamespacesOp((MatchCondition("suffix", ("b",)),)),
        GetOp(("a", "b"), "k4"),
    ]
    got, expected = ours.batch(questions), reference.batch(questions)
    assert comparable(got) == comparable(expected)
    assert [len(answer) for answer in got[:5]] == [2, 2, 4, 2, 1]
