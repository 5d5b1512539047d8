"""Replication: every write reaches several independent central stores (``replicate_to``).

Relays are real processes with their own stores; the figures (acknowledged writes lost 0,
duplicates 0, per-agent order kept) are printed and asserted as in the fault suites. ``--full``
(or ``COMMANDER_OS_SOAK=1``) runs the longer sizes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sync_helpers import (
    WAIT,
    Child,
    Ledger,
    OrderWatcher,
    compare_with_relay,
    wait_until,
)

from commander_os.config import StorageConfig, load_storage_config
from commander_os.errors import ConfigError, RelayUnavailable
from commander_os.relay._process import RelayProcess
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage._delivery.targets import config_targets
from commander_os.storage.agent_storage import AgentStorage

MakeAgent = Callable[..., AgentStorage]
KEYS = 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    """Three relays, each with its own embedded SQLite central store."""
    started = [RelayProcess(data_dir=tmp_path / f"relay{i}") for i in range(3)]
    for relay in started:
        relay.start()
    yield started
    for relay in started:
        relay.stop()


def live_records(url: str, agents: list[str]) -> dict[tuple[str, str], object]:
    """A relay's live kv records: ``(agent, key) -> value``."""
    with RelayClient(url, timeout=WAIT) as client:
        return {
            (r["agent_id"], r["key"]): r["data"]["value"]
            for r in client.query_all(agent_id=agents, table="kv", limit=1000)
        }


def expected_live(ledgers: dict[str, Ledger]) -> dict[tuple[str, str], int]:
    return {
        (agent, key): n
        for agent, ledger in ledgers.items()
        for key, n in ledger.final.items()
        if n is not None
    }


def replicated(store: AgentStorage) -> bool:
    """Every target holds everything the store wrote (none lagging, none repairing)."""
    health = store.health_check()
    return not health["lagging_targets"] and all(
        target["queue_size"] == 0 and not target["repairing"] for target in health["targets"]
    )


class Writer(threading.Thread):
    """Sets, updates and deletes on one store until stopped; each write numbered in a ledger."""

    def __init__(self, store: AgentStorage, ledger: Ledger) -> None:
        super().__init__(name=f"writer-{store.agent_id}", daemon=True)
        self.store, self.ledger = store, ledger
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                key = f"k{(n * 7) % KEYS:03d}"
                if n % 9 == 8:
                    self.store.delete(key)
                    self.ledger.acked_delete(n, key)
                else:
                    self.store.set(key, {"n": n})
                    self.ledger.acked_set(n, key)
                n += 1
                time.sleep(0.002)
        except BaseException as exc:
            self.error = exc


# ------------------------------------------------------------------------------ config


def test_targets_are_htpc_url_then_each_replicate_to_entry() -> None:
    config = StorageConfig(
        htpc_url="http://127.0.0.1:8001",
        htpc_urls=["http://127.0.0.1:8002"],
        replicate_to=[
            "http://127.0.0.1:9001/",
            ["http://127.0.0.1:9101", "http://127.0.0.1:9102"],
            "http://127.0.0.1:8001",  # the primary again: one store counts once
        ],
    )
    targets = config_targets(config)
    assert [(t.name, t.urls) for t in targets] == [
        ("http://127.0.0.1:8001", ("http://127.0.0.1:8001", "http://127.0.0.1:8002")),
        ("http://127.0.0.1:9001", ("http://127.0.0.1:9001",)),
        ("http://127.0.0.1:9101", ("http://127.0.0.1:9101", "http://127.0.0.1:9102")),
    ]
    assert config.quorum_size() == 2  # majority of 3
    assert StorageConfig(replicate_to=["http://127.0.0.1:9"], sync_quorum="all").quorum_size() == 2
    assert StorageConfig(sync_quorum=1).quorum_size() == 1


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"sync_quorum": 2}, "sync_quorum"),
        ({"sync_quorum": 0, "replicate_to": ["http://127.0.0.1:9"]}, "sync_quorum"),
        ({"sync_quorum": "most"}, "sync_quorum"),
        ({"replicate_to": ["http://127.0.0.1:8O01"]}, "replicate_to"),
        ({"replicate_to": [[]]}, "replicate_to"),
    ],
)
def test_bad_replication_settings_name_the_setting(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        StorageConfig(**settings)  # type: ignore[arg-type]


def test_replicate_to_from_the_environment(tmp_path: Path) -> None:
    env = {
        "COMMANDER_OS_REPLICATE_TO": "http://127.0.0.1:9001,http://127.0.0.1:9002",
        "COMMANDER_OS_SYNC_QUORUM": "all",
    }
    config = load_storage_config(None, environ=env)
    assert config.replicate_to == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert config.quorum_size() == 3
    nested = {"COMMANDER_OS_REPLICATE_TO": "[[http://127.0.0.1:9001, http://127.0.0.1:9002]]"}
    assert load_storage_config(None, environ=nested).target_urls()[1] == [
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9002",
    ]
    assert load_storage_config(None, environ={"COMMANDER_OS_SYNC_QUORUM": "1"}).sync_quorum == 1


# ----------------------------------------------------------------------- the drill


def test_three_relays_one_killed_wiped_and_restarted_mid_stream(
    relays: list[RelayProcess], make_agent: MakeAgent, full_run: bool
) -> None:
    seconds = 8.0 if full_run else 2.0
    urls = [relay.url for relay in relays]
    ids = [f"replica-{i}" for i in range(3)]
    stores = {
        a: make_agent(a, urls[0], replicate_to=urls[1:], sync_interval=0.3, sync_quorum="all")
        for a in ids
    }
    ledgers = {a: Ledger(a) for a in ids}
    writers = [Writer(stores[a], ledgers[a]) for a in ids]
    watcher = OrderWatcher(urls[0], ids)
    for writer in writers:
        writer.start()
    try:
        time.sleep(seconds / 2)
        watcher.snapshot(ledgers)
        victim = relays[1]
        victim.kill()
        shutil.rmtree(victim.data_dir)
        time.sleep(0.3)
        victim.restart()
        time.sleep(seconds / 2)
        watcher.snapshot(ledgers)
    finally:
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join(WAIT)
    for writer in writers:
        assert writer.error is None, writer.error
    for store in stores.values():
        assert store.wait_for_sync(WAIT), store.health_check()
        wait_until(lambda s=store: replicated(s), what="every target caught up")  # type: ignore[misc]
        assert store.get_sync_queue_size() == 0
    watcher.snapshot(ledgers)

    want = expected_live(ledgers)
    dumps = [live_records(url, ids) for url in urls]
    for url, dump in zip(urls, dumps, strict=True):
        wrong = {k: v for k, v in dump.items() if want.get(k) != v["n"]}  # type: ignore[index]
        missing = set(want) - set(dump)
        assert not missing, (url, sorted(missing)[:5])
        assert not wrong, (url, list(wrong.items())[:5])
    assert dumps[0] == dumps[1] == dumps[2]
    # The relays that were never wiped also hold every deletion, in order, once.
    for url in (urls[0], urls[2]):
        figures = compare_with_relay(url, ledgers, stores, watcher if url == urls[0] else None)
        figures.assert_clean(f"replica {url}")
    print(f"{sum(len(ledger.writes) for ledger in ledgers.values())} writes, 3 targets")


# ------------------------------------------------------------------- outbox bound


def queue_rows(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM _sync_queue").fetchone()[0])


def test_outbox_stays_bounded_by_keys_while_a_target_is_away(
    relays: list[RelayProcess], make_agent: MakeAgent, full_run: bool, tmp_path: Path
) -> None:
    writes, keys = (10_000, 100) if full_run else (3_000, 100)
    port = free_port()
    away = f"http://127.0.0.1:{port}"
    store = make_agent("bounded", relays[0].url, replicate_to=[away], sync_quorum=1)
    highest = 0
    for n in range(writes):
        store.set(f"key-{n % keys}", {"n": n})
        if n % 100 == 99:
            highest = max(highest, queue_rows(store.db_path))
    assert store.wait_for_sync(WAIT)  # quorum 1: the live target holds it all
    health = store.health_check()
    assert health["lagging_targets"] == [away], health
    lagging = next(t for t in health["targets"] if t["target"] == away)
    assert lagging["queue_size"] == keys, lagging
    assert lagging["last_error"], lagging
    print(f"{writes} writes to {keys} keys, one target away: outbox peaked at {highest} rows")
    assert highest <= keys + 10  # each key's newest change, and the marker row

    late = RelayProcess(data_dir=tmp_path / "late", port=port)
    late.start()
    try:
        wait_until(lambda: replicated(store), what="the returning target caught up")
        final = {("bounded", f"key-{k}"): {"n": writes - keys + k} for k in range(keys)}
        assert live_records(late.url, ["bounded"]) == final
        assert live_records(relays[0].url, ["bounded"]) == final
        assert queue_rows(store.db_path) <= 1
    finally:
        late.stop()


# --------------------------------------------------------------------------- quorum


def on_relays(urls: list[str], agent: str, key: str) -> int:
    return sum(1 for url in urls if (agent, key) in live_records(url, [agent]))


def test_quorum_majority_of_three_does_not_wait_for_a_target_that_is_away(
    relays: list[RelayProcess], make_agent: MakeAgent
) -> None:
    relays[2].kill()
    urls = [relay.url for relay in relays]
    store = make_agent(
        "majority", urls[0], replicate_to=urls[1:], sync_mode="sync", sync_timeout=30
    )
    for n in range(5):
        store.set(f"k{n}", {"n": n})
        # A sync write returns once a majority holds it: two of the three relays, already.
        assert on_relays(urls[:2], "majority", f"k{n}") == 2
    assert store.wait_for_sync(5)
    health = store.health_check()
    assert health["sync_quorum"] == 2
    assert health["lagging_targets"] == [urls[2]]
    relays[2].restart()
    wait_until(lambda: replicated(store), what="the third relay caught up")
    assert on_relays(urls, "majority", "k4") == 3


def test_quorum_all_waits_for_every_target_then_returns_when_it_is_back(
    relays: list[RelayProcess], make_agent: MakeAgent
) -> None:
    relays[2].kill()
    urls = [relay.url for relay in relays]
    store = make_agent(
        "all", urls[0], replicate_to=urls[1:], sync_quorum="all", sync_mode="sync", sync_timeout=0.5
    )
    store.set("k", {"n": 1})  # times out (sync_timeout): the write stays queued
    assert not store.wait_for_sync(0.5)
    assert store.get_sync_queue_size() == 1
    done = threading.Event()
    threading.Thread(target=lambda: store.wait_for_sync(WAIT) and done.set(), daemon=True).start()
    assert not done.wait(0.5)
    relays[2].restart()
    assert done.wait(WAIT)
    assert on_relays(urls, "all", "k") == 3
    assert store.get_sync_queue_size() == 0


# ---------------------------------------------------------------------------- reads


def test_reads_fall_back_to_the_next_target_and_can_name_one(
    relays: list[RelayProcess], make_agent: MakeAgent
) -> None:
    urls = [relay.url for relay in relays]
    writer = make_agent("reads-writer", urls[0], replicate_to=urls[1:], sync_quorum="all")
    writer.set("k", {"n": 1})
    assert writer.wait_for_sync(WAIT)
    reader = make_agent("reads-reader", urls[0], replicate_to=urls[1:], close_timeout=0)
    assert reader.get_remote("reads-writer", "k") == {"n": 1}
    relays[0].kill()
    # The first target is away: the same reads come from the next one.
    assert reader.get_remote("reads-writer", "k") == {"n": 1}
    records = reader.query_network(agent_id="reads-writer", table="kv")
    assert [r["key"] for r in records] == ["k"]
    assert reader.get_remote("reads-writer", "k", target=urls[2]) == {"n": 1}
    with pytest.raises(RelayUnavailable):
        reader.get_remote("reads-writer", "k", target=urls[0])
    with pytest.raises(ValueError, match="not one of this store's"):
        reader.query_network(target="http://127.0.0.1:1")
    for relay in relays[1:]:
        relay.kill()
    with pytest.raises(RelayUnavailable, match="no target could answer"):
        reader.get_remote("reads-writer", "k")


# ------------------------------------------------------------------- relay sync --from


def relay_dump(url: str) -> dict[tuple[str, str, str], tuple[object, int, bool]]:
    """Every record of a relay, deletions included: ``(agent, table, key) -> (data, version,
    deleted)``."""
    with RelayClient(url, timeout=WAIT) as client:
        return {
            (r["agent_id"], r["table"], r["key"]): (r["data"], r["version"], r["deleted"])
            for r in client.query_all(include_deleted=True, limit=1000)
        }


def relay_sync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commander_os", "relay", "sync", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_relay_sync_copies_one_relay_into_another_idempotently_and_resumably(
    relays: list[RelayProcess], make_agent: MakeAgent, tmp_path: Path
) -> None:
    source, target = relays[0], relays[1]
    store = make_agent("copied", source.url)
    store.set_many({f"k{i:04d}": {"n": i} for i in range(2500)})
    for i in range(0, 2500, 10):
        store.delete(f"k{i:04d}")
    assert store.wait_for_sync(WAIT)
    target.stop()  # the copy writes into its central store, as an operator would offline
    result = relay_sync("--from", source.url, "--data-dir", str(target.data_dir), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["records"] == summary["applied"] == 2500
    state = Path(summary["state"])
    assert state.is_file()
    # A rerun copies only what changed since, and what it copies again changes nothing.
    store.set("k0001", {"n": "changed"})
    assert store.wait_for_sync(WAIT)
    again = json.loads(
        relay_sync("--from", source.url, "--data-dir", str(target.data_dir), "--json").stdout
    )
    assert (again["records"], again["applied"]) == (1, 1)
    # From scratch (no cursor): every record is already there.
    state.unlink()
    fresh = json.loads(
        relay_sync("--from", source.url, "--data-dir", str(target.data_dir), "--json").stdout
    )
    assert (fresh["applied"], fresh["already_here"]) == (0, 2500)
    target.start()
    copied = relay_dump(target.url)
    assert copied == relay_dump(source.url)
    assert sum(deleted for _, _, deleted in copied.values()) == 250


def test_relay_sync_refuses_a_bad_source_and_changes_nothing(
    relays: list[RelayProcess], tmp_path: Path
) -> None:
    result = relay_sync("--from", "http://127.0.0.1:8O01", "--data-dir", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "not a valid URL" in result.stderr
    result = relay_sync(
        "--from", f"http://127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "y")
    )
    assert result.returncode == 1
    assert "unreachable" in result.stderr
    assert not list((tmp_path / "y").glob("*.cursor"))


def test_close_ships_to_every_target_that_answers_not_only_a_quorum(
    relays: list[RelayProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    urls = [relay.url for relay in relays]
    store = AgentStorage(
        "closing", tmp_path / "closing", htpc_url=urls[0], replicate_to=urls[1:], enable_htpc=True
    )
    store.set_many({f"k{i}": i for i in range(300)})
    store.close()
    for url in urls:
        assert len(live_records(url, ["closing"])) == 300, url
    relays[2].kill()
    store = AgentStorage(
        "closing", tmp_path / "closing", htpc_url=urls[0], replicate_to=urls[1:], enable_htpc=True
    )
    store.set("late", 1)
    store.close()  # a majority holds it: the target that is away gets it next time
    assert on_relays(urls[:2], "closing", "late") == 2
    assert f"still queued for {urls[2]}" in caplog.text


def test_async_reads_fall_back_along_the_targets_too(
    relays: list[RelayProcess], make_agent: MakeAgent
) -> None:
    urls = [relay.url for relay in relays]
    writer = make_agent("async-writer", urls[0], replicate_to=urls[1:], sync_quorum="all")
    writer.set("k", {"n": 2})
    assert writer.wait_for_sync(WAIT)
    reader = make_agent("async-reader", urls[0], replicate_to=urls[1:], close_timeout=0)
    relays[0].kill()

    async def read() -> tuple[object, object]:
        return (
            await reader.aget_remote("async-writer", "k"),
            await reader.aget_remote("async-writer", "k", target=urls[1]),
        )

    assert asyncio.run(read()) == ({"n": 2}, {"n": 2})


def test_a_target_added_later_is_filled_with_the_current_state(
    relays: list[RelayProcess], tmp_path: Path
) -> None:
    urls = [relay.url for relay in relays]
    data_dir = tmp_path / "grown"
    with AgentStorage("grown", data_dir, htpc_url=urls[0], enable_htpc=True) as store:
        store.set_many({f"k{i}": {"n": i} for i in range(50)})
        store.delete("k0")
        assert store.wait_for_sync(WAIT)
    with AgentStorage(
        "grown", data_dir, htpc_url=urls[0], replicate_to=urls[1:2], enable_htpc=True
    ) as store:
        store.set("k1", {"n": "new"})
        wait_until(lambda: replicated(store), what="the new target filled")
    want = {("grown", f"k{i}"): {"n": i} for i in range(2, 50)} | {("grown", "k1"): {"n": "new"}}
    assert live_records(urls[0], ["grown"]) == want
    assert live_records(urls[1], ["grown"]) == want


# Three agent processes, each writing WRITES numbered sets and deletes to three relays.
AGENT_PROCESS = """
import sys, time
from pathlib import Path
from commander_os.storage.agent_storage import AgentStorage

agent, data_dir, writes, keys, *urls = sys.argv[1:]
store = AgentStorage(agent, Path(data_dir), htpc_url=urls[0], replicate_to=urls[1:],
                     enable_htpc=True, sync_interval=0.3, sync_quorum="all")
print("ready", flush=True)
for n in range(int(writes)):
    key = f"k{(n * 7) % int(keys):03d}"
    if n % 9 == 8:
        store.delete(key)
    else:
        store.set(key, {"n": n})
    time.sleep(0.002)
print("written", flush=True)
assert store.wait_for_sync(120)
store.close()
print("done", flush=True)
"""


def final_state(writes: int, keys: int) -> dict[str, int | None]:
    state: dict[str, int | None] = {}
    for n in range(writes):
        state[f"k{(n * 7) % keys:03d}"] = None if n % 9 == 8 else n
    return state


def test_three_agent_processes_and_a_relay_wiped_mid_stream(
    relays: list[RelayProcess], spawn: Callable[..., Child], tmp_path: Path, full_run: bool
) -> None:
    writes, keys = (3000, 60) if full_run else (800, 40)
    urls = [relay.url for relay in relays]
    ids = [f"process-{i}" for i in range(3)]
    children = [
        spawn(AGENT_PROCESS, a, str(tmp_path / a), str(writes), str(keys), *urls) for a in ids
    ]
    for child in children:
        assert child.read_line() == "ready"
    time.sleep(0.5)
    victim = relays[2]
    victim.kill()
    shutil.rmtree(victim.data_dir)
    time.sleep(0.3)
    victim.restart()
    for child in children:
        assert child.read_line(timeout=120) == "written"
        assert child.read_line(timeout=120) == "done"
        assert child.wait() == 0
    state = final_state(writes, keys)
    want = {(a, k): n for a in ids for k, n in state.items() if n is not None}
    for url in urls:
        dump = live_records(url, ids)
        assert {k: v["n"] for k, v in dump.items()} == want, url  # type: ignore[index]
    # The relays never wiped hold every deletion as well: the same record set, row for row.
    with RelayClient(urls[0], timeout=WAIT) as one, RelayClient(urls[1], timeout=WAIT) as two:
        first, second = (
            sorted(
                (r["agent_id"], r["key"], r["deleted"], r["version"])
                for r in client.query_all(agent_id=ids, include_deleted=True, limit=1000)
            )
            for client in (one, two)
        )
    assert first == second
    assert sum(deleted for _, _, deleted, _ in first) == 3 * sum(n is None for n in state.values())
