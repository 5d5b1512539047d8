"""AgentStorage as the seed promises it: its examples, every method, values and keys."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commander_os.errors import (
    CommanderStorageError,
    InvalidKey,
    StorageClosed,
    ValueTooLarge,
)
from commander_os.storage.agent_storage import AgentStorage
from commander_os.storage.base_storage import BaseStorage

MakeStorage = Callable[..., AgentStorage]

# The seed's "Example 1: Basic Storage Operations", verbatim.
SEED_EXAMPLE_1 = """\
import asyncio
from pathlib import Path
from commander_os.storage.agent_storage import AgentStorage

async def main():
    storage = AgentStorage(
        agent_id="example-agent",
        data_dir=Path("./data/agents/example"),
        enable_htpc=False  # Local only for testing
    )
    
    # Store data
    storage.set('user_preferences', {
        'theme': 'dark',
        'notifications': True
    })
    
    # Retrieve data
    prefs = storage.get('user_preferences')
    print(f"Theme: {prefs['theme']}")
    
    # List all data
    all_data = storage.list_all()
    print(f"Stored keys: {list(all_data.keys())}")
    
    # Cleanup
    await storage.close()

asyncio.run(main())
"""  # noqa: W293 - the seed's own blank lines carry indentation

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
# Keys as users write them: any text without NUL (lone surrogates cannot be encoded at all).
KEY_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
)


def kv_rows(storage: BaseStorage) -> list[tuple[str, str]]:
    return storage.conn.execute("SELECT key, value FROM kv ORDER BY key").fetchall()


# ------------------------------------------------------------------------ the seed's examples


def test_seed_example_1_runs_verbatim(tmp_path: Path, run_python: Callable[..., Any]) -> None:
    result = run_python(SEED_EXAMPLE_1, cwd=tmp_path)
    assert result.stdout.splitlines() == ["Theme: dark", "Stored keys: ['user_preferences']"]
    assert (tmp_path / "data/agents/example/example-agent.db").is_file()


def test_seed_example_1_runs_twice_on_the_same_store(
    tmp_path: Path, run_python: Callable[..., Any]
) -> None:
    run_python(SEED_EXAMPLE_1, cwd=tmp_path)
    result = run_python(SEED_EXAMPLE_1, cwd=tmp_path)
    assert result.stdout.splitlines() == ["Theme: dark", "Stored keys: ['user_preferences']"]


def test_seed_wal_check(make_storage: MakeStorage) -> None:
    storage = make_storage()
    cursor = storage.conn.cursor()
    cursor.execute("PRAGMA journal_mode")
    result = cursor.fetchone()
    assert result[0] == "wal"


def test_seed_health_check_keys_and_values(make_storage: MakeStorage) -> None:
    storage = make_storage("my-agent")
    storage.set("a", 1)
    health = storage.health_check()
    assert {"agent_id", "local_db", "htpc_enabled", "sync_queue_size", "timestamp"} <= set(health)
    assert health["agent_id"] == "my-agent"
    assert health["local_db"] is True
    assert health["htpc_enabled"] is False
    assert health["sync_queue_size"] == 0
    moment = datetime.datetime.fromisoformat(health["timestamp"])
    assert moment.year >= 2025
    assert health["schema_version"] == 1


def test_health_check_with_sync_counts_the_queue(
    make_storage: MakeStorage, dead_relay_url: str
) -> None:
    storage = make_storage(enable_htpc=True, htpc_url=dead_relay_url, sync_interval=0.2)
    storage.set("a", 1)
    storage.set("b", 2)
    health = storage.health_check()
    assert health["htpc_enabled"] is True
    assert health["sync_queue_size"] == 2 == storage.get_sync_queue_size()
    assert health["oldest_pending_age"] is not None
    assert health["oldest_pending_age"] >= 0


def test_get_sync_queue_size_local_only_is_zero(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("a", 1)
    assert storage.get_sync_queue_size() == 0


def test_process_sync_queue_without_sync_returns_zero(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("a", 1)
    assert asyncio.run(storage.process_sync_queue(batch_size=100)) == 0


# ------------------------------------------------------------------------------ closing


def test_await_close_is_idempotent(make_storage: MakeStorage) -> None:
    storage = make_storage()

    async def main() -> None:
        await storage.close()
        await storage.close()

    asyncio.run(main())
    assert storage.closed


def test_plain_close_is_idempotent_and_mixes_with_await(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.close()
    storage.close()

    async def main() -> None:
        await storage.close()

    asyncio.run(main())
    assert storage.closed


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.set("a", 1),
        lambda s: s.get("a"),
        lambda s: s.delete("a"),
        lambda s: s.exists("a"),
        lambda s: "a" in s,
        lambda s: len(s),
        lambda s: s.list_all(),
        lambda s: s.keys(),
        lambda s: s.set_many({"a": 1}),
        lambda s: s.get_many(["a"]),
        lambda s: s.conn,
        lambda s: s.get_sync_queue_size(),
        lambda s: s.transaction().__enter__(),
        lambda s: asyncio.run(s.aget("a")),
    ],
)
def test_use_after_close_raises_storage_closed(
    make_storage: MakeStorage, call: Callable[[AgentStorage], object]
) -> None:
    storage = make_storage()
    storage.set("a", 1)
    storage.close()
    with pytest.raises(StorageClosed):
        call(storage)


def test_health_check_after_close_reports_not_ok(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.close()
    health = storage.health_check()
    assert health["local_db"] is False
    assert "closed" in health["error"]


def test_context_managers_close(tmp_path: Path) -> None:
    with AgentStorage("ctx", tmp_path, enable_htpc=False) as storage:
        storage.set("a", 1)
    assert storage.closed

    async def main() -> AgentStorage:
        async with AgentStorage("ctx", tmp_path, enable_htpc=False) as store:
            assert store.get("a") == 1
        return store

    assert asyncio.run(main()).closed


def test_data_survives_reopen(make_storage: MakeStorage, tmp_path: Path) -> None:
    first = make_storage("keeper")
    first.set("k", {"n": 1})
    first.close()
    second = make_storage("keeper")
    assert second.get("k") == {"n": 1}


# ---------------------------------------------------------------------- the key-value API


def test_set_get_delete_exists(make_storage: MakeStorage) -> None:
    storage = make_storage()
    assert storage.get("missing") is None
    assert storage.get("missing", "fallback") == "fallback"
    assert not storage.exists("k")
    assert "k" not in storage
    storage.set("k", {"v": 1})
    assert storage.get("k", "fallback") == {"v": 1}
    assert storage.exists("k")
    assert "k" in storage
    storage.set("k", [2])
    assert storage.get("k") == [2]
    assert len(storage) == 1
    assert storage.delete("k") is True
    assert storage.delete("k") is False
    assert storage.get("k", 0) == 0
    assert len(storage) == 0


def test_stored_none_is_not_the_default(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("nothing", None)
    assert storage.exists("nothing")
    assert storage.get("nothing", "default") is None


def test_in_with_non_string_is_false(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("1", 1)
    assert 1 not in storage
    assert None not in storage
    assert "" not in storage


def test_list_all_and_keys_sorted(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("b", 2)
    storage.set("a", 1)
    storage.set("c/x", 3)
    assert storage.list_all() == {"a": 1, "b": 2, "c/x": 3}
    assert list(storage.list_all()) == ["a", "b", "c/x"]
    assert storage.keys() == ["a", "b", "c/x"]
    assert storage.keys(prefix="c/") == ["c/x"]
    assert storage.list_all(prefix="c") == {"c/x": 3}
    assert dict(storage.items()) == {"a": 1, "b": 2, "c/x": 3}


PREFIX_KEYS = [
    "a",
    "ab",
    "abc",
    "ab\U0010ffff",
    "ac",
    "user:1",
    "user:10",
    "user;",
    "usera",
    "é",
    "éa",
    "ê",
    "\ud7ff",
    "\ud7ffz",
    "\ue000",
    "日本",
    "日本語",
    "日",
    "😀",
    "😀x",
    "\U0010ffff",
    "\U0010ffff\U0010ffff",
    "%",
    "_x",
    "*",
]


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "a",
        "ab",
        "ab\U0010ffff",
        "abc",
        "abcd",
        "user:",
        "user:1",
        "user",
        "é",
        "e",
        "\ud7ff",
        "日本",
        "日",
        "😀",
        "\U0010ffff",
        "\U0010ffff\U0010ffff",
        "%",
        "_",
        "*",
        "zzz",
    ],
)
def test_keys_prefix_edge_cases(make_storage: MakeStorage, prefix: str) -> None:
    storage = make_storage()
    storage.set_many({key: i for i, key in enumerate(PREFIX_KEYS)})
    expected = sorted(key for key in PREFIX_KEYS if key.startswith(prefix))
    assert storage.keys(prefix=prefix) == expected
    assert list(storage.list_all(prefix=prefix)) == expected


def test_keys_prefix_must_be_a_string(make_storage: MakeStorage) -> None:
    storage = make_storage()
    with pytest.raises(TypeError):
        storage.keys(prefix=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey, match="prefix"):
        storage.keys(prefix="a\ud800")
    with pytest.raises(InvalidKey, match="prefix"):
        storage.list_all(prefix="\udfff")


def test_keys_prefix_property(tmp_path: Path) -> None:
    with AgentStorage("prop", tmp_path, enable_htpc=False) as storage:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(keys=st.sets(KEY_TEXT, max_size=15), prefix=st.text(max_size=3) | KEY_TEXT)
        def check(keys: set[str], prefix: str) -> None:
            storage.conn.execute("DELETE FROM kv")
            storage.set_many(dict.fromkeys(keys))
            if any(0xD800 <= ord(ch) <= 0xDFFF for ch in prefix):
                return
            assert storage.keys(prefix=prefix) == sorted(k for k in keys if k.startswith(prefix))

        check()


def test_set_many_and_get_many(make_storage: MakeStorage) -> None:
    storage = make_storage()
    assert storage.set_many({"a": 1, "b": [2], "c": {"d": 3}}) == 3
    assert storage.set_many([("e", 5), ("a", 10)]) == 2
    assert storage.set_many({}) == 0
    assert storage.get_many(["a", "b", "zz", "e"]) == {"a": 10, "b": [2], "e": 5}
    assert storage.get_many([]) == {}


def test_set_many_bad_value_writes_nothing(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("a", "old")
    with pytest.raises(TypeError, match="'bad'"):
        storage.set_many({"a": "new", "b": 2, "bad": {1, 2}, "c": 3})
    assert storage.list_all() == {"a": "old"}


def test_set_many_bad_key_writes_nothing(make_storage: MakeStorage) -> None:
    storage = make_storage()
    with pytest.raises(InvalidKey):
        storage.set_many([("a", 1), ("", 2)])
    with pytest.raises(InvalidKey):
        storage.set_many([("a", 1), (5, 2)])  # type: ignore[list-item]
    assert storage.list_all() == {}


def test_set_many_is_one_transaction_when_sqlite_fails(
    make_storage: MakeStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = make_storage()
    # A trigger that refuses one key makes SQLite fail half-way through the batch.
    storage.conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON kv WHEN NEW.key = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(CommanderStorageError, match="refused"):
        storage.set_many({"a": 1, "b": 2, "poison": 3, "c": 4})
    assert storage.list_all() == {}
    storage.set("after", 1)  # the connection is usable again
    assert storage.keys() == ["after"]


def test_async_twins(make_storage: MakeStorage) -> None:
    storage = make_storage()

    async def main() -> None:
        await storage.aset("a", {"x": 1})
        assert await storage.aget("a") == {"x": 1}
        assert await storage.aget("missing", 7) == 7
        assert await storage.aexists("a")
        assert await storage.aset_many({"b": 2, "c": 3}) == 2
        assert await storage.aget_many(key for key in ["a", "c", "q"]) == {"a": {"x": 1}, "c": 3}
        assert await storage.akeys() == ["a", "b", "c"]
        assert await storage.akeys("b") == ["b"]
        assert await storage.alist_all() == {"a": {"x": 1}, "b": 2, "c": 3}
        assert await storage.adelete("a") is True
        assert await storage.adelete("a") is False
        results = await asyncio.gather(*(storage.aset(f"k{i}", i) for i in range(20)))
        assert results == [None] * 20

    asyncio.run(main())
    assert len(storage) == 22


# ----------------------------------------------------------------------------- values


def test_nested_json_round_trips(make_storage: MakeStorage) -> None:
    storage = make_storage()
    value = {
        "s": "text ünïcode 😀 \x00 inside",
        "i": -(2**63),
        "big": 2**64 - 1,
        "f": 1.5e-300,
        "t": True,
        "n": None,
        "list": [1, [2, [3, {"deep": []}]], {}],
        "": "empty key",
    }
    storage.set("v", value)
    assert storage.get("v") == value
    for scalar in (0, -1, 3.25, "", "x", True, False, [], {}):
        storage.set("scalar", scalar)
        got = storage.get("scalar")
        assert got == scalar
        assert type(got) is type(scalar)


def test_json_values_round_trip_property(tmp_path: Path) -> None:
    with AgentStorage("values", tmp_path, enable_htpc=False) as storage:

        @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(value=JSON_VALUES)
        def check(value: Any) -> None:
            storage.set("v", value)
            assert storage.get("v") == value

        check()


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        b"bytes",
        bytearray(b"x"),
        object(),
        datetime.datetime(2026, 1, 6, 12, 0),
        datetime.date(2026, 1, 6),
        _Point(1),
        2**64,
        -(2**63) - 1,
        {"nested": [1, {"deep": {3}}]},
        {1: "non-string dict key"},
        float("nan"),
        float("inf"),
        [float("-inf")],
        {"x": {"y": float("nan")}},
    ],
    ids=repr,
)
def test_non_json_values_raise_type_error_naming_the_key(
    make_storage: MakeStorage, value: object
) -> None:
    storage = make_storage()
    storage.set("the-key", "before")
    with pytest.raises(TypeError, match="the-key"):
        storage.set("the-key", value)
    assert storage.get("the-key") == "before"
    assert kv_rows(storage) == [("the-key", '"before"')]


@pytest.mark.parametrize(
    ("value", "where", "what"),
    [
        (uuid.UUID(int=1), "value", "UUID"),
        ({"owner": {"ids": [7, uuid.UUID(int=2)]}}, "value['owner']['ids'][1]", "UUID"),
        ([{"when": datetime.date(2026, 1, 6)}], "value[0]['when']", "date"),
        ({"tags": {"a", "b"}}, "value['tags']", "set"),
        ({"x": {"y": float("nan")}}, "value['x']['y']", "nan"),
        ({"n": {1: "one"}}, "value['n']", "key 1"),
        ({"big": [None, 2**64]}, "value['big'][1]", "64 bits"),
        ({"p": _Point(1)}, "value['p']", "_Point"),
    ],
    ids=repr,
)
def test_non_json_values_name_the_key_and_the_path(
    make_storage: MakeStorage, value: object, where: str, what: str
) -> None:
    storage = make_storage()
    with pytest.raises(TypeError) as caught:
        storage.set("the-key", value)
    message = str(caught.value)
    assert "'the-key'" in message
    assert f"{where} is " in message
    assert what in message
    with pytest.raises(TypeError, match=r"'second'.*value\['id'\] is a UUID"):
        storage.set_many({"first": 1, "second": {"id": uuid.UUID(int=3)}})
    assert kv_rows(storage) == []


def test_text_shaped_like_a_uuid_is_just_text(make_storage: MakeStorage) -> None:
    storage = make_storage()
    value = {"id": str(uuid.UUID(int=4)), "ids": [str(uuid.uuid4())], "none": None}
    storage.set("k", value)
    assert storage.get("k") == value


def test_value_too_large(make_storage: MakeStorage) -> None:
    storage = make_storage(max_value_bytes=2048)
    storage.set("ok", "x" * 1900)  # its row as shipped (key, time) fits too
    with pytest.raises(ValueTooLarge, match="big") as excinfo:
        storage.set("big", "x" * 3000)
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(ValueTooLarge):
        storage.set_many({"small": 1, "big": "x" * 3000})
    assert storage.keys() == ["ok"]


# ------------------------------------------------------------------------------- keys


BAD_KEYS = [
    "",
    None,
    5,
    b"bytes",
    ("tuple",),
    "a\x00b",
    "\x00",
    "lone \ud800 surrogate",
    "\udfff",
    "x" * 1025,
    "é" * 513,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k)[:30])
def test_bad_keys_raise_invalid_key_and_change_nothing(
    make_storage: MakeStorage, key: Any, dead_relay_url: str
) -> None:
    storage = make_storage(enable_htpc=True, htpc_url=dead_relay_url, sync_interval=0.5)
    storage.set("existing", 1)
    before = kv_rows(storage)
    queued = storage.get_sync_queue_size()
    for call in (
        lambda: storage.set(key, 1),
        lambda: storage.get(key),
        lambda: storage.delete(key),
        lambda: storage.exists(key),
        lambda: storage.set_many([(key, 1)]),
        lambda: storage.get_many([key]),
    ):
        with pytest.raises(InvalidKey) as excinfo:
            call()
        assert isinstance(excinfo.value, ValueError)
    assert kv_rows(storage) == before
    assert storage.get_sync_queue_size() == queued


def test_longest_key_is_accepted(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("x" * 1024, 1)
    storage.set("é" * 512, 2)
    assert storage.get("x" * 1024) == 1
    assert storage.get("é" * 512) == 2


def test_str_subclass_key_is_stored_as_plain_str(make_storage: MakeStorage) -> None:
    class Name(str):
        pass

    storage = make_storage()
    storage.set(Name("sub"), 1)
    assert storage.keys() == ["sub"]
    assert type(storage.keys()[0]) is str


def test_raw_sql_sees_json_text(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("k", {"theme": "dark"})
    row = storage.conn.execute("SELECT json_extract(value, '$.theme') FROM kv").fetchone()
    assert row == ("dark",)


def test_corrupt_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "broken.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CommanderStorageError):
        AgentStorage("broken", tmp_path, enable_htpc=False)
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(tmp_path / "broken.db").execute("SELECT 1 FROM sqlite_master")
