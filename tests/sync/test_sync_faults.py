"""Faults: the relay killed, the agent killed, replies lost, the relay away for a long backlog.

Every case ends by printing and asserting: acknowledged writes lost 0, duplicates 0, per-agent
order kept. Run with ``-s`` to see the figures; ``--full`` (or ``COMMANDER_OS_SOAK=1``) runs the
long sizes.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from sync_helpers import (
    WAIT,
    Child,
    DroppingProxy,
    Exchange,
    Ledger,
    OrderWatcher,
    compare_with_relay,
    exactly_once_in_effect,
    exchanges_of,
    relay_metric,
    relay_records,
)

from commander_os.relay._process import RelayProcess
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage.agent_storage import AgentStorage

MakeAgent = Callable[..., AgentStorage]
KEYS_PER_AGENT = 60


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class Writer(threading.Thread):
    """Writes to one agent store without pause until stopped: sets, updates and deletes."""

    def __init__(self, store: AgentStorage, ledger: Ledger, max_writes: int) -> None:
        super().__init__(name=f"writer-{store.agent_id}", daemon=True)
        self.store = store
        self.ledger = ledger
        self.max_writes = max_writes
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(self.max_writes):
                if self.stop.is_set():
                    return
                key = f"k{(n * 7) % KEYS_PER_AGENT:03d}"
                if n % 11 == 10:
                    self.store.delete(key)
                    self.ledger.acked_delete(n, key)
                else:
                    self.store.set(key, {"n": n, "pad": "x" * (n % 50)})
                    self.ledger.acked_set(n, key)
                time.sleep(0.001)  # keep the machine usable for the relay restarts
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


def test_relay_killed_and_restarted_while_agents_write(
    relay: RelayProcess, make_agent: MakeAgent, full_run: bool
) -> None:
    kills = 20 if full_run else 5
    ids = [f"kill-relay-{i}" for i in range(3)]
    stores = {a: make_agent(a, relay.url, sync_interval=0.3) for a in ids}
    ledgers = {a: Ledger(a) for a in ids}
    writers = [Writer(stores[a], ledgers[a], max_writes=100_000) for a in ids]
    watcher = OrderWatcher(relay.url, ids)
    for writer in writers:
        writer.start()
    written_while_down = 0
    try:
        for _ in range(kills):
            time.sleep(0.3)
            watcher.snapshot(ledgers)
            relay.kill()
            before = sum(len(ledger.writes) for ledger in ledgers.values())
            time.sleep(0.3)
            written_while_down += sum(len(ledger.writes) for ledger in ledgers.values()) - before
            relay.restart()
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
        assert store.get_sync_queue_size() == 0
    watcher.snapshot(ledgers)
    figures = compare_with_relay(relay.url, ledgers, stores, watcher)
    print(
        f"relay SIGKILLed {kills} times; {figures.acked} writes by {len(ids)} agents, "
        f"{written_while_down} of them while the relay was down; "
        f"{watcher.snapshots} order snapshots"
    )
    figures.assert_clean("relay killed and restarted")
    assert written_while_down > 0  # local writes went on while the relay was away
    assert watcher.snapshots == 2 * kills + 1


# An agent process that ships its queue through a transport that SIGKILLs the process right
# after the relay's answer arrived: the relay committed, the outbox rows were not deleted.
SHIP_AND_DIE = """
import os, signal, sys
from pathlib import Path

import httpx, orjson, zstandard

from commander_os.config import StorageConfig
from commander_os.storage import RelayClient
from commander_os.storage._delivery.shipper import Shipper
from commander_os.storage._inspect import _FileStore

agent, path, url, kill_after = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
real = httpx.HTTPTransport()
answers = 0


class KillAfterAnswer(httpx.BaseTransport):
    def handle_request(self, request):
        global answers
        body = request.content
        if request.headers.get("content-encoding") == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        sent = orjson.loads(body)
        response = real.handle_request(request)
        response.read()
        print(orjson.dumps({"sent": sent, "answer": orjson.loads(response.content)}).decode(),
              flush=True)
        if any(segment["records"] for segment in sent["segments"]):
            answers += 1
            if answers == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return response


config = StorageConfig(htpc_url=url, sync_batch_size=50)
client = RelayClient(url, http=httpx.Client(transport=KillAfterAnswer()))
shipper = Shipper(background=False, client_factory=lambda target, cfg: client)
store = _FileStore(path, config, None)
link = shipper.attach(store)
with link.reading() as conn:
    before = conn.execute("SELECT count(*) FROM _sync_queue WHERE op != 'mark'").fetchone()[0]
shipper.flush(link, 60, fail_fast=True)
with link.reading() as conn:
    after = conn.execute("SELECT count(*) FROM _sync_queue WHERE op != 'mark'").fetchone()[0]
print(orjson.dumps({"drained": before - after}).decode(), flush=True)
shipper.detach(link)
"""


def _run_shipper(
    spawn: Callable[..., Child], agent: str, path: Path, url: str, kill_after: int
) -> tuple[list[list[Exchange]], int | None, int]:
    """The exchanges of each request that carried records, what was drained, the exit code."""
    child = spawn(SHIP_AND_DIE, agent, str(path), url, str(kill_after))
    requests: list[list[Exchange]] = []
    drained = None
    while True:
        try:
            line = child.read_line()
        except AssertionError:
            break  # the child is gone (killed on purpose, or finished)
        answer = orjson.loads(line)
        if "drained" in answer:
            drained = answer["drained"]
        elif exchanges := exchanges_of("", answer["sent"], answer["answer"], False):
            requests.append(exchanges)
    return requests, drained, child.wait()


def _queued_keys(path: Path) -> list[str]:
    """The key of every outbox row (one per row, repeats included)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT pk FROM _sync_queue WHERE op != 'mark'")
        return [orjson.loads(pk)[0] for (pk,) in rows]
    finally:
        conn.close()


#: Writes per round of the test below.
PER_ROUND = 2100


def test_agent_killed_between_sending_a_batch_and_deleting_its_rows(
    relay: RelayProcess, tmp_path: Path, spawn: Callable[..., Child]
) -> None:
    agent = "killed-agent"
    data_dir = tmp_path / agent
    ledger = Ledger(agent)
    exchanges: list[Exchange] = []
    n = 0
    leftovers = []
    # A request carries up to 1,000 changes (segments of 50): each round queues more than
    # three requests' worth, so the shipper can be killed after its first, second or third.
    for round_, kill_after in enumerate((1, 2, 3)):
        # The agent writes while its relay is down: everything stays queued.
        relay.stop()
        # compact_outbox off: the exact accounting below (each record applied once) follows
        # every queued row; compaction would merge rows of the batch the agent died after.
        with AgentStorage(
            agent,
            data_dir,
            htpc_url=relay.url,
            enable_htpc=True,
            close_timeout=0,
            compact_outbox=False,
        ) as store:
            for start in range(0, PER_ROUND, 100):
                with store.transaction():  # one commit per 100 writes: setup speed only
                    keys = [f"r{round_}-k{i:04d}" for i in range(start, start + 100)]
                    for number, key in enumerate(keys, n):
                        store.set(key, {"n": number})
                for key in keys:  # acknowledged once the transaction committed
                    ledger.acked_set(n, key)
                    n += 1
            if round_:
                for i in range(0, PER_ROUND, 12):  # deletes of keys the relay may already hold
                    key = f"r{round_ - 1}-k{i:04d}"
                    store.delete(key)
                    ledger.acked_delete(n, key)
                    n += 1
            path = store.db_path
        relay.restart()
        requests, drained, code = _run_shipper(spawn, agent, path, relay.url, kill_after)
        assert code == -signal.SIGKILL
        assert drained is None
        assert len(requests) == kill_after
        exchanges += [exchange for request in requests for exchange in request]
        # The relay committed the last request, the agent died before deleting its rows.
        queued_keys = _queued_keys(path)
        for last in requests[-1]:
            assert last.ack["applied"] + last.ack["ignored"] == len(last.records)
            assert {key for _, key, _ in last.records} <= set(queued_keys)  # its rows were kept
        remaining = len(queued_keys)
        leftovers.append(remaining)
    # Reopen and resync: the replayed batches change nothing at the relay.
    final, drained, code = _run_shipper(spawn, agent, path, relay.url, kill_after=10**6)
    assert code == 0
    assert drained == leftovers[-1]
    exchanges += [exchange for request in final for exchange in request]
    replays = sum(exchange.ack["ignored"] for exchange in final[0])
    distinct, applied, ignored = exactly_once_in_effect(exchanges)
    with AgentStorage(agent, data_dir, htpc_url=relay.url, enable_htpc=True) as store:
        assert store.wait_for_sync(WAIT)
        assert store.get_sync_queue_size() == 0
        figures = compare_with_relay(relay.url, {agent: ledger}, {agent: store})
    print(
        f"agent SIGKILLed after 1, 2, 3 batches; left queued {leftovers}; records sent "
        f"{sum(len(e.records) for e in exchanges)}, distinct {distinct}, applied {applied}, "
        f"ignored replays {ignored}"
    )
    figures.assert_clean("agent killed between send and ack")
    assert applied == distinct  # each record applied once ...
    assert ignored > 0  # ... and the replays were recognised as such
    assert replays > 0
    # Per-agent order: the relay's high-water mark is the newest version the agent shipped.
    with RelayClient(relay.url) as client:
        (summary,) = [a for a in client.agents() if a["agent_id"] == agent]
    assert summary["highest_version"] == max(v for e in exchanges for _, _, v in e.records)


def test_replies_lost_after_the_relay_committed(relay: RelayProcess, make_agent: MakeAgent) -> None:
    proxy = DroppingProxy(relay.url, drop_every=3, max_drops=15)
    try:
        ids = [f"lost-reply-{i}" for i in range(2)]
        # compact_outbox off: the exact accounting (each record applied once) follows every
        # queued row, which compaction during a dropped reply would merge.
        stores = {a: make_agent(a, proxy.url, sync_interval=0.2, compact_outbox=False) for a in ids}
        ledgers = {a: Ledger(a) for a in ids}
        writers = [Writer(stores[a], ledgers[a], max_writes=300) for a in ids]
        watcher = OrderWatcher(relay.url, ids)
        for writer in writers:
            writer.start()
        for _ in range(5):
            time.sleep(0.2)
            watcher.snapshot(ledgers)
        for writer in writers:
            writer.join(WAIT)
            assert writer.error is None, writer.error
        for store in stores.values():
            assert store.wait_for_sync(WAIT), store.health_check()
        watcher.snapshot(ledgers)
        figures = compare_with_relay(relay.url, ledgers, stores, watcher)
        exchanges = list(proxy.exchanges)
    finally:
        proxy.close()
    distinct, applied, ignored = exactly_once_in_effect(exchanges)
    dropped = sum(1 for e in exchanges if e.dropped)
    metric_ignored = relay_metric(relay.url, "commander_relay_records_ignored_total")
    print(
        f"{len(exchanges)} write requests through the proxy, {dropped} replies dropped after "
        f"the commit; distinct records {distinct}, applied {applied}, ignored replays {ignored} "
        f"(relay metrics: ignored {metric_ignored:.0f})"
    )
    figures.assert_clean("replies lost after commit")
    assert dropped > 0
    assert applied == distinct
    assert ignored > 0
    assert metric_ignored == ignored


# A long backlog written while the relay is down, then drained, in a process of its own so that
# its memory can be measured: RSS is sampled every few milliseconds while the queue drains.
BACKLOG = """
import gc, json, sys, threading, time
from pathlib import Path

from commander_os.storage.agent_storage import AgentStorage

agent, data_dir, url, total = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


store = AgentStorage(agent, data_dir, htpc_url=url, enable_htpc=True, sync_interval=0.2)
for start in range(0, total, 1000):
    end = min(total, start + 1000)
    store.set_many({f"k{i:06d}": {"n": i, "pad": "p" * 64} for i in range(start, end)})
queued = store.get_sync_queue_size()
gc.collect()
base = rss_kib()
print(json.dumps({"queued": queued, "health": store.health_check()["relay"]}), flush=True)
sys.stdin.readline()  # the relay is up again

peak = base
done = threading.Event()


def sample():
    global peak
    while not done.is_set():
        peak = max(peak, rss_kib())
        time.sleep(0.005)


sampler = threading.Thread(target=sample)
sampler.start()
started = time.monotonic()
synced = store.wait_for_sync(600)
elapsed = time.monotonic() - started
done.set()
sampler.join()
print(json.dumps({
    "synced": synced, "left": store.get_sync_queue_size(), "base_kib": base, "peak_kib": peak,
    "seconds": elapsed, "shipped": store.health_check()["relay"]["shipped_total"],
}), flush=True)
store.close()
"""


def test_long_backlog_drains_with_flat_memory(
    relay: RelayProcess, tmp_path: Path, spawn: Callable[..., Child], full_run: bool
) -> None:
    total = 100_000 if full_run else 20_000
    agent = "backlog"
    url = relay.url
    relay.kill()  # down before the first write
    child = spawn(BACKLOG, agent, str(tmp_path / agent), url, str(total))
    before = orjson.loads(child.read_line(timeout=600))
    assert before["queued"] == total  # every local write worked, all queued
    assert before["health"]["reachable"] is not True
    relay.restart()
    child.send("go")
    after = orjson.loads(child.read_line(timeout=900))
    assert child.wait() == 0
    growth_mib = (after["peak_kib"] - after["base_kib"]) / 1024
    ledger = Ledger(agent)
    for i in range(total):
        ledger.acked_set(i, f"k{i:06d}")
    figures = compare_with_relay(relay.url, {agent: ledger})
    print(
        f"backlog of {total} writes made while the relay was down drained in "
        f"{after['seconds']:.1f} s; agent RSS {after['base_kib'] / 1024:.0f} MiB before, "
        f"peak growth {growth_mib:.1f} MiB while draining"
    )
    figures.assert_clean(f"{total}-write backlog")
    assert after["synced"] is True
    assert after["left"] == 0
    assert after["shipped"] == total
    assert growth_mib < 50
    assert len(relay_records(relay.url, [agent])) == total
