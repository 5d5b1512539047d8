"""The identity rule end to end (ARCHITECTURE invariant 9): no acknowledged write is lost
silently after a restore, a copy, a recreation, a skewed clock, a twin, a power cut, or a relay
that went backwards. Every case runs against a real relay process.

Each test counts the writes that are not on the relay with the value written last (lost) and
the writes the relay ignored as stale: both must be 0, or a conflict must be reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from sync_helpers import REPO_ROOT, WAIT, relay_records, wait_until

from commander_os.relay import RelayProcess
from commander_os.storage.agent_storage import AgentStorage


def open_store(path: Path, agent: str, url: str, **settings: Any) -> AgentStorage:
    settings.setdefault("close_timeout", 5.0)
    return AgentStorage(agent, path, htpc_url=url, enable_htpc=True, **settings)


def write_and_sync(store: AgentStorage, values: dict[str, Any]) -> None:
    store.set_many(values)
    assert store.wait_for_sync(WAIT), store.health_check()


def copy_files(source: Path, target: Path) -> None:
    """A file-level copy of a store folder (what cp, a VM or a filesystem snapshot takes)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.sync-lock"))


def restore_files(copy: Path, live: Path) -> None:
    shutil.rmtree(live)
    shutil.copytree(copy, live)


def on_relay(url: str, agent: str) -> dict[str, Any]:
    """What the relay holds of ``agent``'s keys: value, or None for a deletion."""
    return {
        key: None if record["deleted"] else record["data"]["value"]
        for (_, key), record in relay_records(url, [agent]).items()
    }


def assert_relay_has(url: str, agent: str, expected: dict[str, Any]) -> None:
    held = on_relay(url, agent)
    lost = {key: value for key, value in expected.items() if held.get(key) != value}
    assert lost == {}, f"{len(lost)} writes not on the relay with their last value: {lost}"


def test_a_restored_file_copy_writes_again_and_its_writes_win(
    relay: RelayProcess, tmp_path: Path
) -> None:
    agent, live, snap = "restored-copy", tmp_path / "live", tmp_path / "snapshot"
    with open_store(live, agent, relay.url) as store:
        write_and_sync(store, {f"k{i}": f"v1-{i}" for i in range(10)})
    copy_files(live, snap)  # taken here...
    with open_store(live, agent, relay.url) as store:
        write_and_sync(store, {f"k{i}": f"v2-{i}" for i in range(10)})  # ...then overtaken
    restore_files(snap, live)
    with open_store(live, agent, relay.url) as store:
        write_and_sync(store, {f"k{i}": f"v3-{i}" for i in range(5)})
        health = store.health_check()
        assert health["conflict"] is None
    assert_relay_has(
        relay.url,
        agent,
        {
            **{f"k{i}": f"v3-{i}" for i in range(5)},  # written last: after the restore
            **{f"k{i}": f"v2-{i}" for i in range(5, 10)},  # nothing newer was written to these
        },
    )


def test_the_same_backup_restored_twice(relay: RelayProcess, tmp_path: Path) -> None:
    agent, live = "restored-twice", tmp_path / "live"
    with open_store(live, agent, relay.url) as store:
        write_and_sync(store, {f"k{i}": "before" for i in range(6)})
        backup = store.backup(tmp_path / "backup" / f"{agent}.db")
        write_and_sync(store, {f"k{i}": "after" for i in range(6)})
    for round_ in ("first", "second"):
        (live / f"{agent}.db").unlink()
        for suffix in ("-wal", "-shm"):
            (live / f"{agent}.db{suffix}").unlink(missing_ok=True)
        shutil.copy(backup, live / f"{agent}.db")
        with open_store(live, agent, relay.url) as store:
            keys = range(3) if round_ == "first" else range(1, 2)
            write_and_sync(store, {f"k{i}": round_ for i in keys})
    assert_relay_has(
        relay.url,
        agent,
        {"k0": "first", "k1": "second", "k2": "first", "k3": "after", "k4": "after", "k5": "after"},
    )


def test_a_store_deleted_and_recreated_within_the_same_second(
    relay: RelayProcess, tmp_path: Path
) -> None:
    agent, live = "recreated", tmp_path / "live"
    with open_store(live, agent, relay.url) as store:
        write_and_sync(store, {f"k{i}": "old" for i in range(5)})
    shutil.rmtree(live)
    with open_store(live, agent, relay.url) as store:
        write_and_sync(store, {f"k{i}": "new" for i in range(3)})
    assert_relay_has(relay.url, agent, {"k0": "new", "k1": "new", "k2": "new", "k3": "old"})


SKEWED_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from commander_os.storage.agent_storage import AgentStorage

    agent, data_dir, url = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    with AgentStorage(agent, data_dir, htpc_url=url, enable_htpc=True) as store:
        store.set_many({f"k{i}": "skewed" for i in range(5)})
        assert store.wait_for_sync(60)
""")


@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime (Debian package)")
def test_a_store_created_while_the_clock_was_six_hours_fast(
    relay: RelayProcess, tmp_path: Path
) -> None:
    agent, live = "skewed-clock", tmp_path / "live"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    done = subprocess.run(
        ["faketime", "-f", "+6h", sys.executable, "-c", SKEWED_WRITER, agent, str(live), relay.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    shutil.rmtree(live)  # rebuilt, with the right clock
    with open_store(live, agent, relay.url) as store:
        write_and_sync(store, {f"k{i}": "right" for i in range(5)})
    assert_relay_has(relay.url, agent, {f"k{i}": "right" for i in range(5)})


def test_two_stores_with_one_agent_id_never_lose_silently(
    relay: RelayProcess, tmp_path: Path
) -> None:
    agent = "twins"
    one = open_store(tmp_path / "machine-1", agent, relay.url)
    two = open_store(tmp_path / "machine-2", agent, relay.url)
    try:
        last: tuple[AgentStorage, str] | None = None
        for i in range(11):
            for name, store in (("one", one), ("two", two)):
                value = f"{name}-{i}"
                store.set("shared", value)
                store.wait_for_sync(2.0)
                last = (store, value)
        assert last is not None
        store, value = last
        held = on_relay(relay.url, agent).get("shared")
        fenced = [s for s in (one, two) if s.health_check()["conflict"] is not None]
        if held != value:
            # Not the last write in real time: then its store must say why and keep it queued.
            assert store in fenced, (held, value)
            assert store.get_sync_queue_size() >= 1
            assert store.get("shared") == value
        for twin in fenced:
            assert twin.health_check()["conflict"]["relay_incarnation"] >= 1
            assert twin.get_sync_queue_size() >= 1
        assert fenced, "two live stores shared an agent id and nothing was reported"
    finally:
        one.close()
        two.close()


def test_a_fenced_store_claims_the_agent_back(relay: RelayProcess, tmp_path: Path) -> None:
    agent = "claimed"
    old = open_store(tmp_path / "old", agent, relay.url)
    write_and_sync(old, {"k": "old"})
    new = open_store(tmp_path / "new", agent, relay.url)  # a new store takes the agent over
    write_and_sync(new, {"k": "new"})
    old.set("k", "old-again")
    wait_until(lambda: old.health_check()["conflict"] is not None, what="the old store fenced")
    assert old.get_sync_queue_size() == 1  # kept, never dropped
    assert on_relay(relay.url, agent)["k"] == "new"
    old.claim()  # the operator hands the agent back to the old store
    assert old.wait_for_sync(WAIT)
    assert old.health_check()["conflict"] is None
    assert on_relay(relay.url, agent)["k"] == "old-again"
    new.set("k", "new-again")
    wait_until(lambda: new.health_check()["conflict"] is not None, what="the new store fenced")
    assert new.retire() == 1  # retiring it: its unshipped change goes to dead letters
    assert new.health_check()["retired"] is True
    assert new.health_check()["dead_letters"] == 1
    old.close()
    new.close()


def test_writes_after_a_power_loss_at_durability_normal(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """The store loses its last transactions (durability "normal"), the relay has them."""
    agent, live, on_disk = "power-loss", tmp_path / "live", tmp_path / "on-disk"
    with open_store(live, agent, relay.url, durability="normal") as store:
        write_and_sync(store, {f"k{i}": "durable" for i in range(20)})
    copy_files(live, on_disk)  # what survives the power cut...
    with open_store(live, agent, relay.url, durability="normal") as store:
        write_and_sync(store, {f"k{i}": "lost-locally" for i in range(20)})  # ...not these
    restore_files(on_disk, live)
    with open_store(live, agent, relay.url, durability="normal") as store:
        write_and_sync(store, {f"k{i}": "after" for i in range(20)})
    assert_relay_has(relay.url, agent, {f"k{i}": "after" for i in range(20)})


def test_a_relay_restored_from_an_older_copy_is_refilled(
    relay: RelayProcess, tmp_path: Path
) -> None:
    agent = "relay-restored"
    store = open_store(tmp_path / "agent", agent, relay.url)
    try:
        write_and_sync(store, {f"k{i:03d}": i for i in range(200)})
        relay.stop()
        copy_files(relay.data_dir, tmp_path / "relay-copy")
        relay.restart()
        write_and_sync(store, {f"k{i:03d}": i for i in range(200, 300)})
        for i in range(0, 200, 20):  # deletions the old copy knows nothing of
            store.delete(f"k{i:03d}")
        assert store.wait_for_sync(WAIT)
        relay.stop()
        restore_files(tmp_path / "relay-copy", relay.data_dir)
        relay.restart()
        assert len(relay_records(relay.url, [agent])) == 200  # it lost 100 acked writes
        store.set("after", "restore")  # the next delivery finds out, and repairs
        wait_until(
            lambda: store.wait_for_sync(1.0) and not store.health_check()["relay"]["repairing"],
            what="the relay refilled",
        )
        expected: dict[str, Any] = {f"k{i:03d}": i for i in range(300)}
        for i in range(0, 200, 20):
            expected[f"k{i:03d}"] = None
        expected["after"] = "restore"
        held = on_relay(relay.url, agent)
        assert {k: v for k, v in held.items() if v is not None} == {
            k: v for k, v in expected.items() if v is not None
        }
    finally:
        store.close()


def test_writes_of_one_batch_reach_the_change_feed_in_write_order(
    relay: RelayProcess, tmp_path: Path
) -> None:
    agent = "write-order"
    keys = [chr(c) for c in range(ord("z"), ord("a") - 1, -1)]  # 26 writes, z ... a
    with open_store(tmp_path / "a", agent, relay.url) as store:
        with store.transaction():
            for key in keys:
                store.set(key, key)
        assert store.wait_for_sync(WAIT)
    import httpx

    feed = httpx.get(f"{relay.url}/relay/changes", params={"agent_id": agent, "limit": 100})
    assert [record["key"] for record in feed.json()["records"]] == keys


QUICK_START = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from commander_os.storage.agent_storage import AgentStorage

    async def main():
        storage = AgentStorage(
            agent_id="my-agent",
            data_dir=Path(sys.argv[1]),
            htpc_url=sys.argv[2],
            enable_htpc=True,
        )
        storage.set("config", {"setting": sys.argv[3]})
        config = storage.get("config")
        print("closing", flush=True)
        sys.stdin.readline()  # the relay blinks now
        await storage.close()

    asyncio.run(main())
""")


def test_the_seed_quick_start_as_a_short_script_while_the_relay_blinks(
    relay: RelayProcess, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for run in range(5):
        script = subprocess.Popen(
            [sys.executable, "-c", QUICK_START, str(tmp_path / "agent"), relay.url, f"run-{run}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert script.stdout is not None
        assert script.stdin is not None
        assert script.stdout.readline().strip() == "closing"
        relay.kill()
        script.stdin.write("go\n")
        script.stdin.flush()
        time.sleep(0.5)
        relay.restart()
        _, stderr = script.communicate(timeout=60)
        assert script.returncode == 0, stderr
        assert "never awaited" not in stderr
        assert on_relay(relay.url, "my-agent")["config"] == {"setting": f"run-{run}"}
