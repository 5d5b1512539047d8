"""Replication to two PostgreSQL-backed relays, each on a central store of its own.

Two schemas stand for two databases (or two clusters): the relays share nothing. One of them
goes away while the agent writes; when it is back it converges with the other, deletions
included, and its database is compared row for row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_helpers import database_url, scratch_schema, with_search_path

from commander_os.relay._process import RelayProcess
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage.agent_storage import AgentStorage

WAIT = 60.0


@pytest.fixture
def pg_relays(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    """Two relays, each on its own fresh schema of the test server."""
    url = database_url()
    with scratch_schema(url, create=True) as first, scratch_schema(url, create=True) as second:
        relays = [
            RelayProcess(
                data_dir=tmp_path / f"relay{i}",
                extra_args=("--database-url", with_search_path(url, schema)),
            )
            for i, schema in enumerate((first, second))
        ]
        try:
            for relay in relays:
                relay.start()
            yield relays
        finally:
            for relay in relays:
                relay.stop()


def dump(url: str) -> dict[tuple[str, str], object]:
    with RelayClient(url, timeout=WAIT) as client:
        return {
            (r["key"], "deleted" if r["deleted"] else "live"): r["data"]
            for r in client.query_all(agent_id="pg-replicated", include_deleted=True, limit=1000)
        }


def test_two_postgres_relays_as_two_targets(pg_relays: list[RelayProcess], tmp_path: Path) -> None:
    first, second = pg_relays
    store = AgentStorage(
        "pg-replicated",
        tmp_path / "agent",
        htpc_url=first.url,
        replicate_to=[second.url],
        sync_quorum="all",
        sync_interval=0.3,
        close_timeout=0,
    )
    try:
        store.set_many({f"k{i:03d}": {"n": i} for i in range(200)})
        assert store.wait_for_sync(WAIT)
        second.stop()
        for i in range(0, 200, 4):
            store.delete(f"k{i:03d}")
        for i in range(1, 200, 4):
            store.set(f"k{i:03d}", {"n": i, "again": True})
        assert not store.wait_for_sync(0.5)  # "all": the second store is away
        assert store.health_check()["lagging_targets"] == [second.url]
        second.start()
        assert store.wait_for_sync(WAIT), store.health_check()
        assert store.get_sync_queue_size() == 0
    finally:
        store.close()
    records = dump(first.url)
    assert records == dump(second.url)
    assert sum(state == "deleted" for _, state in records) == 50
    assert records[("k001", "live")]["value"] == {"n": 1, "again": True}  # type: ignore[index]
