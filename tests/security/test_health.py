"""``/health`` stays fast, honest and discreet.

* Fast: it answers within a second while every query reader is busy (it never waits in the
  query pool), on both central stores.
* Honest: when commits fail (a full disk: injected, and for real on a small tmpfs) it answers
  503 ``"degraded"``, and ``"ok"`` again once a commit succeeds.
* Discreet: with auth on, only an admin token sees paths, database names and counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from security_helpers import (
    HEAVY_QUERY,
    SECRET,
    all_records,
    bearer,
    load_heavy,
    record,
    relay_client,
    token,
)

from commander_os.config import RelayConfig
from commander_os.errors import CentralStoreUnavailable
from commander_os.relay import create_app
from commander_os.relay.central import (
    CentralStore,
    PostgresCentralStore,
    store_for_config,
)

pytestmark = pytest.mark.anyio

#: Generous, as a load balancer's check would be; before the fix it took seconds.
HEALTH_BOUND_SECONDS = 1.0


def app_over(store: CentralStore, tmp_path: Path, **settings: Any) -> Any:
    return create_app(RelayConfig(agent_storage_dir=tmp_path / "relay", **settings), store=store)


@contextlib.asynccontextmanager
async def readers_busy(store: CentralStore, relay: Any) -> AsyncIterator[None]:
    """Every query reader of ``store`` taken: SQLite's four threads by real heavy queries,
    PostgreSQL's pool by holding each of its connections (its queries end too fast to)."""
    if isinstance(store, PostgresCentralStore):
        pool = store._readers
        assert pool is not None
        async with contextlib.AsyncExitStack() as held:
            for _ in range(pool.max_size):
                await held.enter_async_context(pool.connection())
            yield
        return
    await load_heavy(store)
    queries = [asyncio.create_task(relay.post("/relay/query", json=HEAVY_QUERY)) for _ in range(8)]
    await asyncio.sleep(0.2)  # the heavy queries are on the readers now (each runs ~1 s)
    yield
    assert {(await task).status_code for task in queries} == {200}


async def test_health_answers_fast_while_every_reader_is_busy(
    store_factory: Any, tmp_path: Path
) -> None:
    store = store_factory(query_timeout=60.0)
    await store.open()
    try:
        async with relay_client(app_over(store, tmp_path)) as relay, readers_busy(store, relay):
            started = time.monotonic()
            answer = await relay.get("/health")
            took = time.monotonic() - started
    finally:
        await store.close()
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"
    assert took < HEALTH_BOUND_SECONDS


async def test_failing_commits_make_health_degraded_until_one_succeeds(
    any_store: CentralStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = any_store._writer
    assert writer is not None
    commit = writer._commit

    async def disk_full(group: Any) -> Any:
        raise CentralStoreUnavailable("central store could not commit: database or disk is full")

    async with relay_client(app_over(any_store, tmp_path)) as relay:
        monkeypatch.setattr(writer, "_commit", disk_full)
        failed = await relay.post("/relay/immediate", json=record("agent-a", "lost", 1))
        assert failed.status_code == 503
        health = await relay.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "degraded"
        assert body["central_store"]["reachable"] is True
        assert body["central_store"]["writable"] is False
        assert "disk is full" in body["central_store"]["write_error"]
        assert await all_records(any_store) == []
        monkeypatch.setattr(writer, "_commit", commit)
        assert (await relay.post("/relay/immediate", json=record("agent-a", "k", 2))).is_success
        health = await relay.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert "write_error" not in health.json()["central_store"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root, as CI's container runs): a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    with path.open("wb") as out, pytest.raises(OSError, match="No space left"):
        write_forever(out)


def write_forever(out: Any) -> None:
    while True:
        out.write(b"\0" * 65536)
        out.flush()
        os.fsync(out.fileno())


async def test_a_really_full_disk_makes_health_degraded(small_disk: Path) -> None:
    config = RelayConfig(agent_storage_dir=small_disk / "relay")
    store = store_for_config(config)
    await store.open()
    try:
        async with relay_client(create_app(config, store=store)) as relay:
            assert (await relay.get("/health")).json()["status"] == "ok"
            fill(small_disk / "filler")
            batch = {
                "agent_id": "agent-a",
                "records": [
                    record("agent-a", f"k{i}", i + 1, data={"v": "x" * 4000}) for i in range(100)
                ],
            }
            assert (await relay.post("/relay/batch", json=batch)).status_code == 503
            health = await relay.get("/health")
            assert health.status_code == 503
            assert health.json()["status"] == "degraded"
            assert await all_records(store) == []
            (small_disk / "filler").unlink()
            assert (await relay.post("/relay/batch", json=batch)).status_code == 200
            health = await relay.get("/health")
            assert (health.status_code, health.json()["status"]) == (200, "ok")
    finally:
        await store.close()


async def test_with_auth_on_only_an_admin_sees_details(
    any_store: CentralStore, tmp_path: Path
) -> None:
    app = app_over(any_store, tmp_path, auth=True, secret=SECRET)
    secret_words = ["path", "database", "commits", "max_rev", "uptime", str(tmp_path)]
    async with relay_client(app) as relay:
        for headers in (
            {},
            bearer(token("agent-a")),
            bearer(token("agent-a", admin=True, secret="forged-" + SECRET)),
            {"authorization": "Basic YWRtaW46YWRtaW4="},
        ):
            answer = await relay.get("/health", headers=headers)
            assert answer.status_code == 200
            assert set(answer.json()) == {"status", "version"}
            assert not any(word in answer.text for word in secret_words)
        admin = await relay.get("/health", headers=bearer(token("ops", admin=True)))
        details = admin.json()["central_store"]
        assert details["reachable"] is True
        assert details["commits"] >= 0
        assert ("path" in details) or ("database" in details)
