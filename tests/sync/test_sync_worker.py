"""SyncWorker at unit level: ``sync_once()`` called directly, no background thread, no sleeping.

Requests are observed through an injected ``httpx.Client`` (event hooks or a wrapping
transport); faults come from ``httpx.MockTransport``. Deliveries go to a real relay process.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import zstandard
from sync_helpers import WAIT, relay_records, wait_until

from commander_os import _sqlite as db
from commander_os.config import StorageConfig
from commander_os.errors import RelayError, RelayUnavailable
from commander_os.relay._process import RelayProcess
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage._delivery.worker import BACKOFF_START_SECONDS, SyncWorker, _backoff
from commander_os.storage._inspect import inspect_store
from commander_os.storage.agent_storage import AgentStorage


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def queued_store(data_dir: Path, agent_id: str, values: dict[str, Any]) -> Path:
    """An agent database with ``values`` written and still queued (the relay was away)."""
    with AgentStorage(agent_id, data_dir, htpc_url=dead_url(), enable_htpc=True) as store:
        if values:
            store.set_many(values)
        assert store.get_sync_queue_size() == len(values)
        return store.db_path


def queue_rows(path: Path) -> list[tuple[int, int]]:
    """``(seq, attempts)`` of every outbox row, read through a connection of our own."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT seq, attempts FROM _sync_queue ORDER BY seq").fetchall()
    finally:
        conn.close()


def dead_letters(path: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT pk, error, attempts FROM _dead_letters ORDER BY seq").fetchall()
    finally:
        conn.close()


class Requests:
    """Every request an ``httpx.Client`` sends: path, encoding, number of records."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, int]] = []

    def hook(self, request: httpx.Request) -> None:
        body = request.content
        encoding = request.headers.get("content-encoding")
        if encoding == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        parsed = orjson.loads(body) if body else {}
        count = len(parsed["records"]) if "records" in parsed else 1
        self.seen.append((request.url.path, encoding, count))


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator[Callable[..., SyncWorker]]:
    """Factory for a SyncWorker on an agent database with an injected ``httpx.Client``."""
    workers: list[SyncWorker] = []

    def make(
        agent_id: str, path: Path, url: str, http: httpx.Client | None = None, **settings: Any
    ) -> SyncWorker:
        config = StorageConfig(htpc_url=url, **settings)
        worker = SyncWorker(
            agent_id=agent_id,
            db_path=path,
            config=config,
            client=RelayClient(url, http=http or httpx.Client(timeout=WAIT)),
            connect=lambda: db.connect(path, durability="full"),
        )
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()


def test_one_record_goes_to_immediate_a_backlog_to_batch_in_chunks(
    shared_relay: RelayProcess, tmp_path: Path, make_worker: Callable[..., SyncWorker]
) -> None:
    agent = "worker-chunks"
    one = queued_store(tmp_path / "one", agent + "-1", {"only": 1})
    requests = Requests()
    http = httpx.Client(timeout=WAIT, event_hooks={"request": [requests.hook]})
    worker = make_worker(agent + "-1", one, shared_relay.url, http)
    assert worker.sync_once() == 1
    assert requests.seen == [("/relay/immediate", None, 1)]
    assert worker.sync_once() == 0  # nothing left: no request at all
    assert len(requests.seen) == 1

    many = queued_store(tmp_path / "many", agent + "-2", {f"k{i:04d}": i for i in range(230)})
    requests = Requests()
    http = httpx.Client(timeout=WAIT, event_hooks={"request": [requests.hook]})
    worker = make_worker(agent + "-2", many, shared_relay.url, http, sync_batch_size=100)
    assert worker.drain() == 230
    assert [(path, count) for path, _, count in requests.seen] == [
        ("/relay/batch", 100),
        ("/relay/batch", 100),
        ("/relay/batch", 30),
    ]
    assert requests.seen[0][1] == "zstd"  # 100 records are well past the compression threshold
    assert queue_rows(many) == []
    assert len(relay_records(shared_relay.url, [agent + "-2"])) == 230


def test_outbox_rows_are_deleted_only_after_the_ack(
    shared_relay: RelayProcess, tmp_path: Path, make_worker: Callable[..., SyncWorker]
) -> None:
    agent = "worker-ack-order"
    path = queued_store(tmp_path, agent, {f"k{i}": i for i in range(10)})
    during: list[tuple[int, int]] = []
    real = httpx.HTTPTransport()

    def handler(request: httpx.Request) -> httpx.Response:
        before = len(queue_rows(path))
        response = real.handle_request(request)
        response.read()
        # The relay has committed; the rows are still queued until the worker sees the answer.
        during.append((before, len(queue_rows(path))))
        return response

    worker = make_worker(agent, path, shared_relay.url, httpx.Client(transport=_Wrap(handler)))
    assert worker.sync_once() == 10
    assert during == [(10, 10)]
    assert queue_rows(path) == []
    real.close()


class _Wrap(httpx.BaseTransport):
    """A transport that hands each request to ``handler`` (which may use a real transport)."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.handler(request)


def _status(code: int, body: bytes = b'{"error": "busy"}') -> Callable[..., httpx.Response]:
    return lambda request: httpx.Response(code, content=body, request=request)


def _timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out (injected)", request=request)


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused (injected)", request=request)


@pytest.mark.parametrize(
    ("handler", "words"),
    [
        (_status(500), "500"),
        (_status(503), "503"),
        (_status(429), "429"),
        (_timeout, "timed out"),
        (_refused, "unreachable"),
    ],
    ids=["500", "503", "429", "timeout", "refused"],
)
def test_relay_unavailable_keeps_the_queue_intact(
    tmp_path: Path,
    make_worker: Callable[..., SyncWorker],
    handler: Callable[..., httpx.Response],
    words: str,
) -> None:
    agent = "worker-unavailable"
    path = queued_store(tmp_path, agent, {f"k{i}": i for i in range(5)})
    before = queue_rows(path)
    transport = httpx.MockTransport(handler)
    worker = make_worker(agent, path, "http://relay.invalid", httpx.Client(transport=transport))
    for _ in range(10):  # more than max_retry_count: outages never dead-letter
        with pytest.raises(RelayUnavailable, match=words):
            worker.sync_once()
    assert queue_rows(path) == before  # nothing deleted, no attempt counted
    assert dead_letters(path) == []
    status = worker.status()
    assert status["reachable"] is False
    assert words in status["last_error"]
    assert status["consecutive_failures"] == 10


def test_401_never_dead_letters(tmp_path: Path, make_worker: Callable[..., SyncWorker]) -> None:
    agent = "worker-401"
    path = queued_store(tmp_path, agent, {"a": 1, "b": 2})
    transport = httpx.MockTransport(_status(401, b'{"error": "unauthorized"}'))
    worker = make_worker(
        agent, path, "http://relay.invalid", httpx.Client(transport=transport), max_retry_count=2
    )
    for _ in range(6):
        with pytest.raises(RelayUnavailable, match="401"):
            worker.sync_once()
    assert [attempts for _, attempts in queue_rows(path)] == [0, 0]
    assert dead_letters(path) == []


def test_a_rejected_record_is_dead_lettered_while_its_batch_is_delivered(
    shared_relay: RelayProcess, tmp_path: Path, make_worker: Callable[..., SyncWorker]
) -> None:
    """A value nested deeper than the relay's limit gets a real 422 from the real relay."""
    agent = "worker-dead-letter"
    poison: Any = "bottom"
    for _ in range(80):
        poison = {"deeper": poison}
    values = {f"good-{i:02d}": i for i in range(10)}
    values["poison"] = poison
    values.update({f"later-{i:02d}": i for i in range(5)})
    path = queued_store(tmp_path, agent, values)
    worker = make_worker(agent, path, shared_relay.url, max_retry_count=3)
    assert worker.sync_once() == 15  # everything but the poison, found by splitting the batch
    assert [attempts for _, attempts in queue_rows(path)] == [1]
    assert worker.sync_once() == 0
    assert [attempts for _, attempts in queue_rows(path)] == [2]
    assert worker.sync_once() == 0  # the third refusal: max_retry_count reached
    assert queue_rows(path) == []
    (letter,) = dead_letters(path)
    assert letter[0] == '["poison"]'
    assert "422" in letter[1]
    assert "json_too_deep" in letter[1]
    on_relay = relay_records(shared_relay.url, [agent])
    assert sorted(key for _, key in on_relay) == sorted(set(values) - {"poison"})
    report = inspect_store(path)
    assert report["dead_letters"] == 1
    assert report["sync_queue_size"] == 0
    assert worker.status()["last_error"] is not None


def test_dead_letters_show_in_health_check(
    shared_relay: RelayProcess, tmp_path: Path, make_agent: Callable[..., AgentStorage]
) -> None:
    poison: Any = 0
    for _ in range(70):
        poison = [poison]
    store = make_agent("worker-dead-health", shared_relay.url, max_retry_count=2)
    store.set("poison", poison)
    store.set("fine", 1)

    # The background worker retries the refused record and then gives up on it.
    def settled() -> bool:
        health = store.health_check()
        return health["dead_letters"] == 1 and health["sync_queue_size"] == 0

    wait_until(settled, what="the poison dead-lettered and the rest delivered")
    health = store.health_check()
    assert health["dead_letters"] == 1
    assert health["sync_queue_size"] == 0
    assert "json_too_deep" in health["relay"]["last_error"]
    assert [r["key"] for r in store.query_network(agent_id=store.agent_id)] == ["fine"]


def test_an_answer_that_is_not_json_is_reported_and_keeps_the_queue(
    tmp_path: Path, make_worker: Callable[..., SyncWorker]
) -> None:
    """htpc_url pointing at some other web server that answers 200 with HTML."""
    agent = "worker-not-json"
    path = queued_store(tmp_path, agent, {"a": 1})
    transport = httpx.MockTransport(_status(200, b"<html>hello</html>"))
    worker = make_worker(agent, path, "http://relay.invalid", httpx.Client(transport=transport))
    for _ in range(3):
        with pytest.raises(RelayError, match="not JSON"):
            worker.sync_once()
    assert len(queue_rows(path)) == 1
    assert worker.status()["reachable"] is False
    assert "not JSON" in worker.status()["last_error"]


def test_an_endpoint_that_does_not_exist_never_dead_letters(
    tmp_path: Path, make_worker: Callable[..., SyncWorker]
) -> None:
    """A URL that is not a relay (404 for /relay/*) is a configuration problem, not bad data."""
    agent = "worker-404"
    path = queued_store(tmp_path, agent, {f"k{i}": i for i in range(4)})
    transport = httpx.MockTransport(_status(404, b'{"detail": "Not Found"}'))
    worker = make_worker(
        agent, path, "http://relay.invalid", httpx.Client(transport=transport), max_retry_count=1
    )
    for _ in range(3):
        with pytest.raises(RelayError, match="404"):
            worker.sync_once()
    assert len(queue_rows(path)) == 4
    assert dead_letters(path) == []


def test_fails_over_to_the_next_relay_url(
    shared_relay: RelayProcess, tmp_path: Path, make_worker: Callable[..., SyncWorker]
) -> None:
    agent = "worker-failover"
    path = queued_store(tmp_path, agent, {"a": 1, "b": 2})
    config = StorageConfig(htpc_url=dead_url(), htpc_urls=[shared_relay.url])
    client = RelayClient(config.relay_urls(), timeout=WAIT)
    worker = SyncWorker(
        agent_id=agent,
        db_path=path,
        config=config,
        client=client,
        connect=lambda: db.connect(path),
    )
    try:
        assert worker.sync_once() == 2
        assert client.url == shared_relay.url
        assert worker.status()["urls"] == config.relay_urls()
    finally:
        worker.stop()
    assert len(relay_records(shared_relay.url, [agent])) == 2


def test_backoff_grows_and_is_capped_at_sync_interval() -> None:
    cap = 2.0
    previous_ceiling = 0.0
    for failures in range(1, 40):
        ceiling = min(cap, BACKOFF_START_SECONDS * 2 ** (failures - 1))
        samples = [_backoff(failures, cap) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples), (failures, min(samples))
        assert max(samples) <= cap
        assert ceiling >= previous_ceiling
        previous_ceiling = ceiling
        assert len(set(samples)) > 1  # jittered
    assert _backoff(1, cap) <= BACKOFF_START_SECONDS
    assert _backoff(10_000, cap) <= cap  # no overflow for a relay away for days
    assert _backoff(10_000, cap) >= cap / 2
    assert _backoff(0, 60) <= BACKOFF_START_SECONDS


def test_two_workers_on_one_database_only_one_ships(
    shared_relay: RelayProcess, tmp_path: Path, make_worker: Callable[..., SyncWorker]
) -> None:
    agent = "worker-flock"
    path = queued_store(tmp_path, agent, {"a": 1})
    first = make_worker(agent, path, shared_relay.url)
    second = make_worker(agent, path, shared_relay.url)
    assert first.sync_once() == 1
    # Another writer (raw SQL: the capture triggers queue it like any write).
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("INSERT INTO kv VALUES ('b', '2', 0), ('c', '3', 0)")
    finally:
        conn.close()
    assert second.sync_once() == 0  # `first` holds the lock
    assert second.status()["shipping"] is False
    assert first.status()["shipping"] is True
    assert len(queue_rows(path)) == 2
    first.stop()  # releases the lock
    assert second.sync_once() == 2
    assert second.status()["shipping"] is True
    assert sorted(k for _, k in relay_records(shared_relay.url, [agent])) == ["a", "b", "c"]


def test_pipelined_drain_acks_in_order_and_an_outage_mid_drain_loses_nothing(
    shared_relay: RelayProcess, tmp_path: Path, make_worker: Callable[..., SyncWorker]
) -> None:
    agent = "worker-pipeline"
    path = queued_store(tmp_path, agent, {f"k{i:04d}": i for i in range(250)})
    real = httpx.HTTPTransport()
    queued_while_in_flight: list[int] = []
    answered = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal answered
        if answered == 2:  # the third batch meets an outage
            return httpx.Response(503, content=b'{"error": "busy"}', request=request)
        response = real.handle_request(request)
        response.read()
        answered += 1
        queued_while_in_flight.append(len(queue_rows(path)))
        return response

    worker = make_worker(
        agent, path, shared_relay.url, httpx.Client(transport=_Wrap(handler)), sync_batch_size=100
    )
    with pytest.raises(RelayUnavailable):
        worker.drain()
    # Two batches acked, in order; the prefetched third was read but stays queued.
    assert queued_while_in_flight == [250, 150]
    assert [seq for seq, _ in queue_rows(path)] == list(range(201, 251))
    with pytest.raises(RelayUnavailable):  # the outage persists: nothing more is acked
        worker.drain()
    assert len(queue_rows(path)) == 50
    answered = 0  # the relay is back
    assert worker.drain() == 50
    assert queue_rows(path) == []
    stored = relay_records(shared_relay.url, [agent])
    assert sorted(key for _, key in stored) == [f"k{i:04d}" for i in range(250)]
    real.close()
