"""Large values are kept zstd-compressed at rest, transparently to get/set (and to the relay:
``tests/sync/test_restore.py`` rebuilds a store with large values row for row)."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commander_os.storage import _outbox as outbox
from commander_os.storage._values import COMPRESS_ABOVE, is_compressed
from commander_os.storage.agent_storage import AgentStorage

MakeStorage = Callable[..., AgentStorage]
FILLER = "agent memory: observed the user asking about the plan. " * 200  # > 4 KB

VALUES: dict[str, Any] = {
    "null": None,
    "true": True,
    "false": False,
    "int": -(2**63),
    "uint": 2**64 - 1,
    "float": 1.5e-300,
    "text": "h\u00e9llo \u2603 " + FILLER,
    "list": [1, "two", [3.0], {"four": None}, FILLER],
    "dict": {"z": 1, "a": {"nested": [True, False, None]}, "text": FILLER},
    "empty_text": "",
    "empty_list": [],
    "empty_dict": {},
}


def _stored(storage: AgentStorage, key: str) -> Any:
    return storage.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()[0]


def test_every_json_type_round_trips_small_and_large(make_storage: MakeStorage) -> None:
    storage = make_storage()
    for name, value in VALUES.items():
        storage.set(name, value)
        storage.set(f"large/{name}", {"v": value, "pad": FILLER})
    for name, value in VALUES.items():
        assert storage.get(name) == value
        assert storage.get(f"large/{name}") == {"v": value, "pad": FILLER}
        assert is_compressed(_stored(storage, f"large/{name}"))
    assert storage.get_many(["text", "large/int"]) == {
        "text": VALUES["text"],
        "large/int": {"v": VALUES["int"], "pad": FILLER},
    }
    everything = storage.list_all()
    assert everything["large/dict"] == {"v": VALUES["dict"], "pad": FILLER}
    assert dict(storage.items(prefix="large/"))["large/null"] == {"v": None, "pad": FILLER}


def test_small_values_stay_json_text(make_storage: MakeStorage) -> None:
    storage = make_storage()
    small = {"text": "x" * (COMPRESS_ABOVE - 20)}
    storage.set("small", small)
    stored = _stored(storage, "small")
    assert isinstance(stored, str)
    assert orjson.loads(stored) == small
    storage.set("big", {"text": "x" * (COMPRESS_ABOVE + 1)})
    assert is_compressed(_stored(storage, "big"))


def test_incompressible_large_values_stay_text(make_storage: MakeStorage) -> None:
    storage = make_storage()
    noise = secrets.token_hex(COMPRESS_ABOVE)  # random hex: compresses to about half
    storage.set("noise", noise)
    assert storage.get("noise") == noise


def test_compressed_values_ship_as_json(make_storage: MakeStorage) -> None:
    storage = make_storage()
    value = {"doc": FILLER, "n": [1, 2.5, None]}
    storage.set("big", value)
    with storage.reading() as conn:
        table = outbox.registered_tables(conn)["kv"]
        [(_, key, data)] = outbox.table_chunk(conn, table, None, 10)
    assert key == "big"
    assert orjson.loads(orjson.dumps(data["value"])) == value  # what a record carries


def test_a_store_written_before_compression_reads_the_same(tmp_path: Path) -> None:
    storage = AgentStorage("old-agent", tmp_path, enable_htpc=False)
    storage.close()
    conn = sqlite3.connect(tmp_path / "old-agent.db")
    conn.execute("INSERT INTO kv VALUES ('k', ?, 1.0)", (orjson.dumps({"t": FILLER}).decode(),))
    conn.commit()
    conn.close()
    with AgentStorage("old-agent", tmp_path, enable_htpc=False) as again:
        assert again.get("k") == {"t": FILLER}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(value=json_values, pad=st.integers(0, 3))
def test_any_json_value_round_trips(
    tmp_path_factory: pytest.TempPathFactory, value: Any, pad: int
) -> None:
    folder = tmp_path_factory.mktemp("prop")
    with AgentStorage("prop", folder, enable_htpc=False) as storage:
        wrapped = {"v": value, "pad": FILLER[: pad * 2000]}
        storage.set("k", wrapped)
        assert storage.get("k") == wrapped
