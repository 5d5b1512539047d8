"""The shipper at unit level: ``step()`` called directly, no background thread, no sleeping.

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
from sync_helpers import WAIT, Ledger, OrderWatcher, compare_with_relay, relay_records, wait_until

from commander_os.config import StorageConfig
from commander_os.errors import RelayError, RelayProtocolError, RelayUnavailable
from commander_os.relay import RelayProcess
from commander_os.storage import RelayClient
from commander_os.storage._delivery.lane import BACKOFF_START_SECONDS, backoff
from commander_os.storage._delivery.link import StoreLink
from commander_os.storage._delivery.shipper import Shipper
from commander_os.storage._delivery.targets import Target
from commander_os.storage._inspect import _FileStore, inspect_store
from commander_os.storage.agent_storage import AgentStorage


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def queued_store(data_dir: Path, agent_id: str, values: dict[str, Any]) -> Path:
    """An agent database with ``values`` written and still queued (the relay was away)."""
    with AgentStorage(
        agent_id, data_dir, htpc_url=dead_url(), enable_htpc=True, close_timeout=0
    ) as store:
        if values:
            store.set_many(values)
        assert store.get_sync_queue_size() == len(values)
        return store.db_path


def queue_rows(path: Path) -> list[tuple[int, int]]:
    """``(seq, attempts)`` of every queued change, read through a connection of our own."""
    conn = sqlite3.connect(path)
    try:
        sql = "SELECT seq, attempts FROM _sync_queue WHERE op != 'mark' ORDER BY seq"
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def dead_letters(path: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT pk, error, attempts FROM _dead_letters ORDER BY seq").fetchall()
    finally:
        conn.close()


class Requests:
    """Every request an ``httpx.Client`` sends: path, encoding, records per segment."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, list[int]]] = []

    def hook(self, request: httpx.Request) -> None:
        body = request.content
        encoding = request.headers.get("content-encoding")
        if encoding == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        parsed = orjson.loads(body) if body else {}
        counts = [len(segment["records"]) for segment in parsed.get("segments", [])]
        self.seen.append((request.url.path, encoding, counts))


class Shipping:
    """A shipper without threads over store files, with an injected HTTP client."""

    def __init__(self) -> None:
        self.shippers: list[Shipper] = []
        self.stores: list[_FileStore] = []

    def attach(
        self, path: Path, url: str | list[str], http: httpx.Client | None = None, **settings: Any
    ) -> tuple[Shipper, StoreLink]:
        urls = [url] if isinstance(url, str) else url
        config = StorageConfig(htpc_url=urls[0], htpc_urls=urls[1:], **settings)
        client = RelayClient(urls, http=http or httpx.Client(timeout=WAIT))
        shipper = Shipper(background=False, client_factory=lambda target, cfg: client)
        store = _FileStore(path, config, None)
        _retarget(path, urls)
        link = shipper.attach(store, [Target(urls[0], tuple(urls))])
        self.shippers.append(shipper)
        self.stores.append(store)
        return shipper, link

    def close(self) -> None:
        for shipper in self.shippers:
            shipper.close()
        for store in self.stores:
            store.close()


def _retarget(path: Path, urls: list[str]) -> None:
    """Point the store's only delivery target at ``urls`` (it was queued towards nobody)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "UPDATE _sync_targets SET name = ?, urls = ?",
            (urls[0], orjson.dumps(urls).decode()),
        )
    finally:
        conn.close()


@pytest.fixture
def shipping() -> Iterator[Shipping]:
    made = Shipping()
    yield made
    made.close()


def drain(shipper: Shipper, link: StoreLink) -> int:
    """Ship until acknowledged; how many queued changes that took away."""
    with link.reading() as conn:
        before = conn.execute("SELECT count(*) FROM _sync_queue WHERE op != 'mark'").fetchone()[0]
    shipper.flush(link, WAIT, fail_fast=True)
    with link.reading() as conn:
        after = conn.execute("SELECT count(*) FROM _sync_queue WHERE op != 'mark'").fetchone()[0]
    return int(before - after)


def status(link: StoreLink) -> dict[str, Any]:
    (lane,) = link.lanes.values()
    return {
        "reachable": lane.reachable,
        "last_error": lane.last_error,
        "consecutive_failures": lane.failures,
        "shipping": link.active,
    }


# ------------------------------------------------------------------------------------ tests


def test_changes_travel_in_segments_of_sync_batch_size(
    shared_relay: RelayProcess, tmp_path: Path, shipping: Shipping
) -> None:
    agent = "shipper-chunks"
    one = queued_store(tmp_path / "one", agent + "-1", {"only": 1})
    requests = Requests()
    http = httpx.Client(timeout=WAIT, event_hooks={"request": [requests.hook]})
    shipper, link = shipping.attach(one, shared_relay.url, http)
    assert drain(shipper, link) == 1
    # A new store first asks for an incarnation (no records), then sends its change.
    assert requests.seen == [("/relay/batch", None, [0]), ("/relay/batch", None, [1])]
    assert shipper.step() is False  # nothing left: no request at all
    assert len(requests.seen) == 2

    many = queued_store(tmp_path / "many", agent + "-2", {f"k{i:04d}": i for i in range(230)})
    requests = Requests()
    http = httpx.Client(timeout=WAIT, event_hooks={"request": [requests.hook]})
    shipper, link = shipping.attach(many, shared_relay.url, http, sync_batch_size=100)
    assert drain(shipper, link) == 230
    # A backlog travels as several segments of sync_batch_size in one request.
    assert [counts for _, _, counts in requests.seen] == [[0], [100, 100, 30]]
    assert requests.seen[1][1] == "zstd"  # 100 records are well past the compression threshold
    assert queue_rows(many) == []
    assert len(relay_records(shared_relay.url, [agent + "-2"])) == 230


def test_outbox_rows_are_deleted_only_after_the_ack(
    shared_relay: RelayProcess, tmp_path: Path, shipping: Shipping
) -> None:
    agent = "shipper-ack-order"
    path = queued_store(tmp_path, agent, {f"k{i}": i for i in range(10)})
    during: list[tuple[int, int]] = []
    real = httpx.HTTPTransport()

    def handler(request: httpx.Request) -> httpx.Response:
        before = len(queue_rows(path))
        response = real.handle_request(request)
        response.read()
        # The relay has committed; the rows are still queued until the shipper sees the answer.
        during.append((before, len(queue_rows(path))))
        return response

    shipper, link = shipping.attach(path, shared_relay.url, httpx.Client(transport=_Wrap(handler)))
    assert drain(shipper, link) == 10
    assert during == [(10, 10), (10, 10)]  # the grant, then the changes
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


def _fails(shipper: Shipper, link: StoreLink, error: type[Exception], words: str) -> None:
    for lane in link.lanes.values():
        lane.retry_at = 0.0  # no waiting out the backoff in a unit test
    with pytest.raises(error, match=words):
        shipper.flush(link, WAIT, fail_fast=True)


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
    tmp_path: Path, shipping: Shipping, handler: Callable[..., httpx.Response], words: str
) -> None:
    agent = "shipper-unavailable"
    path = queued_store(tmp_path, agent, {f"k{i}": i for i in range(5)})
    before = queue_rows(path)
    transport = httpx.MockTransport(handler)
    shipper, link = shipping.attach(path, "http://relay.invalid", httpx.Client(transport=transport))
    for _ in range(10):  # more than max_retry_count: outages never dead-letter
        _fails(shipper, link, RelayUnavailable, words)
    assert queue_rows(path) == before  # nothing deleted, no attempt counted
    assert dead_letters(path) == []
    state = status(link)
    assert state["reachable"] is False
    assert words in state["last_error"]
    assert state["consecutive_failures"] == 10
    # Kept in the store, for other processes and `commander-os status` to see.
    report = inspect_store(path)
    assert report["sync_queue_size"] == 5


def test_401_never_dead_letters(tmp_path: Path, shipping: Shipping) -> None:
    agent = "shipper-401"
    path = queued_store(tmp_path, agent, {"a": 1, "b": 2})
    transport = httpx.MockTransport(_status(401, b'{"error": "unauthorized"}'))
    shipper, link = shipping.attach(
        path, "http://relay.invalid", httpx.Client(transport=transport), max_retry_count=2
    )
    for _ in range(6):
        _fails(shipper, link, RelayError, "401")
    assert [attempts for _, attempts in queue_rows(path)] == [0, 0]
    assert dead_letters(path) == []


def test_a_rejected_record_is_dead_lettered_while_the_rest_is_delivered(
    shared_relay: RelayProcess, tmp_path: Path, shipping: Shipping
) -> None:
    """A value nested deeper than the relay's limit gets a real 422 from the real relay."""
    agent = "shipper-dead-letter"
    poison: Any = "bottom"
    for _ in range(80):
        poison = {"deeper": poison}
    values = {f"good-{i:02d}": i for i in range(10)}
    values["poison"] = poison
    values.update({f"later-{i:02d}": i for i in range(5)})
    path = queued_store(tmp_path, agent, values)
    shipper, link = shipping.attach(path, shared_relay.url, max_retry_count=3)

    def settled() -> bool:
        for lane in link.lanes.values():
            lane.retry_at = 0.0
        shipper.step()
        return not queue_rows(path)

    wait_until(settled, what="the poison isolated and dead-lettered")
    (letter,) = dead_letters(path)
    assert letter[0] == '["poison"]'
    assert "422" in letter[1]
    assert "json_too_deep" in letter[1]
    assert letter[2] == 2  # counted twice, dead-lettered at the third refusal
    on_relay = relay_records(shared_relay.url, [agent])
    assert sorted(key for _, key in on_relay) == sorted(set(values) - {"poison"})
    report = inspect_store(path)
    assert report["dead_letters"] == 1
    assert report["sync_queue_size"] == 0


def test_dead_letters_show_in_health_check(
    shared_relay: RelayProcess, make_agent: Callable[..., AgentStorage]
) -> None:
    poison: Any = 0
    for _ in range(70):
        poison = [poison]
    store = make_agent("shipper-dead-health", shared_relay.url, max_retry_count=2)
    store.set("poison", poison)
    store.set("fine", 1)

    def settled() -> bool:
        health = store.health_check()
        return health["dead_letters"] == 1 and health["sync_queue_size"] == 0

    wait_until(settled, what="the poison dead-lettered and the rest delivered")
    assert [r["key"] for r in store.query_network(agent_id=store.agent_id)] == ["fine"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>hello</html>", "not JSON"),
        (b"{}", "not a delivery acknowledgement"),
        (b'{"acks": []}', "0 acks for 1 segments"),
    ],
    ids=["html", "empty-object", "no-acks"],
)
def test_an_answer_that_is_not_an_ack_keeps_the_queue(
    tmp_path: Path, shipping: Shipping, body: bytes, words: str
) -> None:
    """htpc_url pointing at some other web server (or a proxy) that answers 200."""
    agent = "shipper-not-an-ack"
    path = queued_store(tmp_path, agent, {f"k{i}": i for i in range(11)})
    transport = httpx.MockTransport(_status(200, body))
    shipper, link = shipping.attach(path, "http://relay.invalid", httpx.Client(transport=transport))
    for _ in range(3):
        _fails(shipper, link, RelayProtocolError, words)
    assert len(queue_rows(path)) == 11
    assert status(link)["reachable"] is True  # it answered: the problem is what it said
    assert words in status(link)["last_error"]


def _ack(**changes: Any) -> Callable[[httpx.Request], httpx.Response]:
    """A relay that answers every segment with an ack that is wrong in ``changes``."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.content
        if request.headers.get("content-encoding") == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        acks = []
        for segment in orjson.loads(body)["segments"]:
            records = segment["records"]
            ack = {
                "agent_id": segment["agent_id"],
                "verdict": "applied",
                "incarnation": segment["incarnation"] or 1,
                "through": records[-1]["seq"] if records else segment["base"],
                "count": len(records),
                "applied": len(records),
                "ignored": 0,
                "relay_incarnation": segment["incarnation"],
                "relay_seq_hi": segment["base"],
                "highest_version": 1,
            }
            if segment["incarnation"] == 0:
                ack["verdict"] = "reincarnate"
                ack["applied"] = 0
            else:
                ack.update(changes)
            acks.append(ack)
        return httpx.Response(200, json={"acks": acks}, request=request)

    return handler


@pytest.mark.parametrize(
    "wrong",
    [
        {"agent_id": "someone-else"},
        {"count": 1},
        {"through": 2},
        {"applied": 1},
        {"incarnation": 99},
    ],
    ids=["agent", "count", "through", "accounted", "incarnation"],
)
def test_an_ack_that_does_not_cover_what_was_sent_deletes_nothing(
    tmp_path: Path, shipping: Shipping, wrong: dict[str, Any]
) -> None:
    agent = "shipper-bad-ack"
    path = queued_store(tmp_path, agent, {f"k{i}": i for i in range(11)})
    http = httpx.Client(transport=httpx.MockTransport(_ack(**wrong)))
    shipper, link = shipping.attach(path, "http://relay.invalid", http)
    _fails(shipper, link, RelayProtocolError, "does not match what was sent")
    assert len(queue_rows(path)) == 11
    assert "does not match" in status(link)["last_error"]


def test_a_redirect_is_a_failure_with_backoff_not_a_loop(
    tmp_path: Path, shipping: Shipping
) -> None:
    agent = "shipper-redirect"
    path = queued_store(tmp_path, agent, {"a": 1})
    calls = 0

    def redirect(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(307, headers={"location": "http://elsewhere/"}, request=request)

    shipper, link = shipping.attach(
        path, "http://relay.invalid", httpx.Client(transport=httpx.MockTransport(redirect))
    )
    _fails(shipper, link, RelayProtocolError, "307")
    for _ in range(50):  # stepping again within the backoff sends nothing
        shipper.step()
    assert calls == 1
    assert "redirects are not followed" in status(link)["last_error"]
    assert len(queue_rows(path)) == 1


def test_an_endpoint_that_does_not_exist_never_dead_letters(
    tmp_path: Path, shipping: Shipping
) -> None:
    """A URL that is not a relay (404 for /relay/*) is a configuration problem, not bad data."""
    agent = "shipper-404"
    path = queued_store(tmp_path, agent, {f"k{i}": i for i in range(4)})
    transport = httpx.MockTransport(_status(404, b'{"detail": "Not Found"}'))
    shipper, link = shipping.attach(
        path, "http://relay.invalid", httpx.Client(transport=transport), max_retry_count=1
    )
    for _ in range(3):
        _fails(shipper, link, RelayError, "404")
    assert len(queue_rows(path)) == 4
    assert dead_letters(path) == []


def test_fails_over_to_the_next_relay_url(
    shared_relay: RelayProcess, tmp_path: Path, shipping: Shipping
) -> None:
    agent = "shipper-failover"
    path = queued_store(tmp_path, agent, {"a": 1, "b": 2})
    shipper, link = shipping.attach(path, [dead_url(), shared_relay.url])
    assert drain(shipper, link) == 2
    (lane,) = link.lanes.values()
    assert lane.route.client.url == shared_relay.url
    assert len(relay_records(shared_relay.url, [agent])) == 2


def test_backoff_grows_and_is_capped_at_sync_interval() -> None:
    cap = 2.0
    previous_ceiling = 0.0
    for failures in range(1, 40):
        ceiling = min(cap, BACKOFF_START_SECONDS * 2 ** (failures - 1))
        samples = [backoff(failures, cap) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples), (failures, min(samples))
        assert max(samples) <= cap
        assert ceiling >= previous_ceiling
        previous_ceiling = ceiling
        assert len(set(samples)) > 1  # jittered
    assert backoff(1, cap) <= BACKOFF_START_SECONDS
    assert backoff(10_000, cap) <= cap  # no overflow for a relay away for days
    assert backoff(10_000, cap) >= cap / 2
    assert backoff(0, 60) <= BACKOFF_START_SECONDS


def test_two_shippers_on_one_database_only_one_ships(
    shared_relay: RelayProcess, tmp_path: Path, shipping: Shipping
) -> None:
    agent = "shipper-flock"
    path = queued_store(tmp_path, agent, {"a": 1})
    first, first_link = shipping.attach(path, shared_relay.url)
    second, second_link = shipping.attach(path, shared_relay.url)
    assert first_link.active is True
    assert second_link.active is False
    assert drain(first, first_link) == 1
    # Another writer (raw SQL: the capture triggers queue it like any write).
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("INSERT INTO kv VALUES ('b', '2', 0), ('c', '3', 0)")
    finally:
        conn.close()
    assert second.step() is False  # `first` holds the lock: `second` sends nothing
    assert len(queue_rows(path)) == 2
    first.detach(first_link)  # releases the lock
    second_link.try_takeover()
    assert second_link.active is True
    assert drain(second, second_link) == 2
    assert sorted(k for _, k in relay_records(shared_relay.url, [agent])) == ["a", "b", "c"]


def test_pipelined_segments_ack_in_order_and_an_outage_mid_drain_loses_nothing(
    shared_relay: RelayProcess, tmp_path: Path, shipping: Shipping
) -> None:
    agent = "shipper-pipeline"
    # A request carries up to 1,000 changes: ten segments of sync_batch_size 100.
    path = queued_store(tmp_path, agent, {f"k{i:04d}": i for i in range(2500)})
    real = httpx.HTTPTransport()
    answered = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal answered
        if answered == 3:  # the grant and two requests pass; the third request meets an outage
            return httpx.Response(503, content=b'{"error": "busy"}', request=request)
        response = real.handle_request(request)
        response.read()
        answered += 1
        return response

    shipper, link = shipping.attach(
        path, shared_relay.url, httpx.Client(transport=_Wrap(handler)), sync_batch_size=100
    )
    with pytest.raises(RelayUnavailable):
        shipper.flush(link, WAIT, fail_fast=True)
    assert [seq for seq, _ in queue_rows(path)] == list(range(2001, 2501))
    _fails(shipper, link, RelayUnavailable, "503")  # the outage persists: nothing more acked
    assert len(queue_rows(path)) == 500
    answered = 0  # the relay is back
    for lane in link.lanes.values():
        lane.retry_at = 0.0
    assert drain(shipper, link) == 500
    assert queue_rows(path) == []
    stored = relay_records(shared_relay.url, [agent])
    assert sorted(key for _, key in stored) == [f"k{i:04d}" for i in range(2500)]
    real.close()


def test_order_holds_while_a_backlog_drains_in_pipelined_requests(
    shared_relay: RelayProcess, tmp_path: Path
) -> None:
    """A backlog of updates and deletes of few keys, drained with small segments, several per
    request and several requests in flight: every snapshot of the relay shows a prefix of the
    agent's writes, and no key's version ever goes back."""
    agent = "shipper-order-pipelined"
    ledger = Ledger(agent)
    with AgentStorage(
        agent, tmp_path, htpc_url=dead_url(), enable_htpc=True, close_timeout=0
    ) as store:
        for n in range(3000):
            key = f"k{n % 40:02d}"
            if n % 7 == 6:
                store.delete(key)
                ledger.acked_delete(n, key)
            else:
                store.set(key, {"n": n, "key": key})
                ledger.acked_set(n, key)
    watcher = OrderWatcher(shared_relay.url, [agent])
    store = AgentStorage(
        agent,
        tmp_path,
        htpc_url=shared_relay.url,
        enable_htpc=True,
        sync_batch_size=7,  # segments of 7 changes, many to a request
        sync_pipeline=4,
        sync_linger=0,
    )
    try:
        while store.get_sync_queue_size():
            watcher.snapshot({agent: ledger})
        assert store.wait_for_sync(WAIT)
        watcher.snapshot({agent: ledger})
        figures = compare_with_relay(shared_relay.url, {agent: ledger}, {agent: store}, watcher)
    finally:
        store.close()
    assert watcher.backwards == []
    assert watcher.out_of_order == []
    assert watcher.snapshots >= 2
    figures.assert_clean("backlog drained in pipelined requests")
