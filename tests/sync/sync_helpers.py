"""Helpers of the sync tests: relay state, fault figures, child processes."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import zstandard

from commander_os.storage._delivery.client import RelayClient
from commander_os.storage.agent_storage import AgentStorage

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Upper bound for every wait in these tests; generous, the machine is shared and slow.
WAIT = 60.0


# ------------------------------------------------------------------------ relay state


def relay_records(url: str, agent_ids: list[str] | None = None) -> dict[tuple[str, str], dict]:
    """Every ``kv`` record on the relay (deletes included), by ``(agent_id, key)``.

    Raises AssertionError if a record appears twice: one identity is one row on the relay.
    """
    found: dict[tuple[str, str], dict] = {}
    with RelayClient(url, timeout=WAIT) as client:
        for record in client.query_all(
            agent_id=agent_ids, table="kv", include_deleted=True, limit=1000
        ):
            ident = (record["agent_id"], record["key"])
            assert ident not in found, f"{ident} returned twice by /relay/query"
            found[ident] = record
    return found


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Poll ``predicate`` (bounded); fail the test if it never holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def relay_metric(url: str, name: str) -> float:
    """One counter from the relay's ``/metrics``."""
    text = httpx.get(url + "/metrics", timeout=WAIT).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not exposed:\n{text}")


@dataclass
class Ledger:
    """What one agent acknowledged: each write numbered in order, and each key's final state.

    Values are ``{"n": write_number, "key": key, ...}``, so a relay record says which write it
    holds. ``None`` as a final state means "deleted".
    """

    agent_id: str
    writes: list[tuple[int, str, bool]] = field(default_factory=list)  # (n, key, is_delete)
    final: dict[str, int | None] = field(default_factory=dict)  # key -> n of last set / None

    def acked_set(self, n: int, key: str) -> None:
        self.writes.append((n, key, False))
        self.final[key] = n

    def acked_delete(self, n: int, key: str) -> None:
        self.writes.append((n, key, True))
        self.final[key] = None


@dataclass
class Figures:
    """The figures every fault test prints and asserts."""

    acked: int = 0
    lost: int = 0
    duplicates: int = 0
    order_violations: int = 0
    problems: list[str] = field(default_factory=list)

    def report(self, title: str) -> str:
        line = (
            f"[{title}] acknowledged writes {self.acked}: lost {self.lost}, duplicates "
            f"{self.duplicates}, per-agent order violations {self.order_violations}"
        )
        print(line)
        for problem in self.problems[:10]:
            print("   ", problem)
        return line

    def assert_clean(self, title: str) -> None:
        line = self.report(title)
        assert (self.lost, self.duplicates, self.order_violations) == (0, 0, 0), (
            line + "\n" + "\n".join(self.problems[:20])
        )


class OrderWatcher:
    """Checks relay snapshots as they are taken during a run.

    *Duplicates* (in effect): a key's version on the relay must never go backwards. *Order*: a
    snapshot must show a prefix of each agent's writes — if write ``n`` is visible, every key's
    state must be at least as new as its last write before ``n``.
    """

    def __init__(self, url: str, agent_ids: list[str]) -> None:
        self.url = url
        self.agent_ids = agent_ids
        self.seen_version: dict[tuple[str, str], int] = {}
        self.snapshots = 0
        self.backwards: list[str] = []
        self.out_of_order: list[str] = []

    def snapshot(self, ledgers: dict[str, Ledger]) -> None:
        """One atomic read per agent (a single page, so a single SQL snapshot)."""
        with RelayClient(self.url, timeout=5.0) as client:
            for agent in self.agent_ids:
                page = client.query(agent_id=agent, table="kv", include_deleted=True, limit=1000)
                assert page["next_cursor"] is None, "order snapshots need one page per agent"
                self._check(agent, page["records"], ledgers[agent])
        self.snapshots += 1

    def _check(self, agent: str, records: list[dict], ledger: Ledger) -> None:
        state: dict[str, tuple[int | None, int]] = {}  # key -> (write number or None, version)
        for record in records:
            ident = (agent, record["key"])
            previous = self.seen_version.get(ident, 0)
            if record["version"] < previous:
                self.backwards.append(f"{ident}: version {record['version']} < {previous}")
            self.seen_version[ident] = max(previous, record["version"])
            number = None if record["deleted"] else record["data"]["value"]["n"]
            state[record["key"]] = (number, record["version"])
        sets = [(n, version) for n, version in state.values() if n is not None]
        if not sets:
            return
        newest, newest_version = max(sets)
        # Every key must reflect its last write at or before `newest`. (A tombstone newer than
        # `newest` is a later delete; one older than it is a stale state: out of order.)
        writes = list(ledger.writes)  # the writer thread appends; a copy is enough
        expected: dict[str, int | None] = {}
        for n, key, is_delete in writes:
            if n > newest:
                break
            expected[key] = None if is_delete else n
        for key, n in expected.items():
            if n is None:
                continue
            held, version = state.get(key, (None, 0))
            stale = version < newest_version if held is None else held < n
            if stale:
                self.out_of_order.append(
                    f"{agent}/{key}: relay shows write {newest} but holds {held} (version "
                    f"{version}) for a key written as {n} before it"
                )


def compare_with_relay(
    url: str,
    ledgers: dict[str, Ledger],
    stores: dict[str, AgentStorage] | None = None,
    watcher: OrderWatcher | None = None,
) -> Figures:
    """Final figures: every acknowledged final state present once on the relay (and locally)."""
    figures = Figures(acked=sum(len(ledger.writes) for ledger in ledgers.values()))
    on_relay = relay_records(url, list(ledgers))
    for agent, ledger in ledgers.items():
        for key, n in ledger.final.items():
            record = on_relay.get((agent, key))
            if record is None:
                figures.lost += 1
                figures.problems.append(f"{agent}/{key}: missing on the relay (want {n})")
            elif n is None and not record["deleted"]:
                figures.lost += 1
                figures.problems.append(f"{agent}/{key}: delete lost, relay holds {record}")
            elif n is not None and (record["deleted"] or record["data"]["value"]["n"] != n):
                figures.lost += 1
                figures.problems.append(f"{agent}/{key}: relay holds {record}, want write {n}")
            if stores is not None:
                local = stores[agent].get(key)
                if (local is None) != (n is None) or (local is not None and local["n"] != n):
                    figures.lost += 1
                    figures.problems.append(f"{agent}/{key}: local {local}, want write {n}")
        extra = {key for (a, key) in on_relay if a == agent} - set(ledger.final)
        figures.duplicates += len(extra)
        figures.problems += [f"{agent}/{key}: on the relay, never written" for key in extra]
        if len({split_epoch(r["version"]) for (a, _), r in on_relay.items() if a == agent}) > 1:
            figures.problems.append(f"{agent}: records of several epochs (not expected here)")
    if watcher is not None:
        figures.duplicates += len(watcher.backwards)
        figures.order_violations += len(watcher.out_of_order)
        figures.problems += watcher.backwards + watcher.out_of_order
    return figures


def split_epoch(version: int) -> int:
    return version >> 32


# --------------------------------------------------------------------------- processes


class Child:
    """A ``python -c`` child process whose stdout lines are read by a thread (no deadlocks)."""

    def __init__(self, code: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    def read_line(self, timeout: float = WAIT) -> str:
        """The child's next stdout line; fail (with its stderr) on silence or early exit."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"child said nothing for {timeout} s; stderr:\n{''.join(self.stderr)}"
            ) from None
        if line is None:
            self.process.wait(timeout=10)
            time.sleep(0.1)  # let the stderr thread finish
            raise AssertionError(
                f"child exited ({self.process.returncode}) early; stderr:\n{''.join(self.stderr)}"
            )
        return line

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def wait(self, timeout: float = WAIT) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        if self.process.stdin is not None:
            self.process.stdin.close()
        for thread in self._threads:
            thread.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


# --------------------------------------------------------------------- a dropping proxy


def _read_http_message(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """One HTTP/1.1 message (headers + Content-Length body) from ``sock``; None at EOF."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head_end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        assert name.strip().lower() != b"transfer-encoding", "the test proxy needs lengths"
    while len(buffer) < head_end + length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    message = bytes(buffer[: head_end + length])
    del buffer[: head_end + length]
    return message


def _body(message: bytes) -> tuple[bytes, bytes]:
    head, _, body = message.partition(b"\r\n\r\n")
    return head, body


@dataclass
class Exchange:
    """One write request that went through the proxy, and the relay's answer to it."""

    path: str
    records: list[tuple[str, str, int]]  # (agent_id, key, version)
    ack: dict
    dropped: bool


class DroppingProxy:
    """A real TCP proxy on 127.0.0.1 that forwards requests to the relay and, for every
    ``drop_every``-th write (``/relay/immediate`` or ``/relay/batch``), drops the connection
    instead of returning the reply: the relay committed, the agent never hears of it.

    At most ``max_drops`` replies are dropped, so every run ends.
    """

    def __init__(self, upstream: str, *, drop_every: int = 3, max_drops: int = 20) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.drop_every = drop_every
        self.max_drops = max_drops
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._writes = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    @property
    def dropped(self) -> int:
        return sum(1 for exchange in self.exchanges if exchange.dropped)

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._relay_connection, args=(client,), daemon=True)
            with self._lock:
                self._sockets.append(client)
                self._threads.append(thread)
            thread.start()

    def _relay_connection(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream, timeout=WAIT)
        with self._lock:
            self._sockets.append(upstream)
        from_client, from_upstream = bytearray(), bytearray()
        try:
            while True:
                request = _read_http_message(client, from_client)
                if request is None:
                    return
                upstream.sendall(request)
                response = _read_http_message(upstream, from_upstream)
                if response is None:
                    return
                if not self._forward(request, response):
                    return  # closing both ends drops the reply
                client.sendall(response)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def _forward(self, request: bytes, response: bytes) -> bool:
        head, body = _body(request)
        path = head.split(b" ", 2)[1].decode()
        if path not in ("/relay/immediate", "/relay/batch"):
            return True
        if b"content-encoding: zstd" in head.lower():
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        status = int(response.split(b" ", 2)[1])
        answer = orjson.loads(_body(response)[1]) if status == 200 else {}
        with self._lock:
            self._writes += 1
            drop = (
                status == 200
                and self._writes % self.drop_every == 0
                and self.dropped < self.max_drops
            )
            self.exchanges += exchanges_of(path, orjson.loads(body), answer, drop)
        return not drop

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in [self._accept, *threads]:
            thread.join(10)
        for sock in sockets:
            sock.close()


def exchanges_of(path: str, sent: dict, answer: dict, dropped: bool) -> list[Exchange]:
    """The exchanges of one write request: one per delivery segment (with its own ack), or
    one for a plain write. Grants (segments without records) are left out."""
    if "segments" not in sent:
        records = sent.get("records", [sent])
        return [
            Exchange(
                path, [(r["agent_id"], r["key"], r["version"]) for r in records], answer, dropped
            )
        ]
    acks = answer.get("acks") or [{} for _ in sent["segments"]]
    found = []
    for segment, ack in zip(sent["segments"], acks, strict=True):
        if not segment["records"]:
            continue
        high = segment["incarnation"] << 32
        records = [(segment["agent_id"], r["key"], high | r["seq"]) for r in segment["records"]]
        found.append(Exchange(path, records, ack, dropped))
    return found


def exactly_once_in_effect(exchanges: list[Exchange]) -> tuple[int, int, int]:
    """``(distinct records sent, applied, ignored)`` over every committed write request.

    Each distinct ``(agent, key, version)`` must be applied exactly once: a replay is ignored.
    """
    distinct = {record for exchange in exchanges for record in exchange.records}
    applied = sum(exchange.ack.get("applied", 0) for exchange in exchanges)
    ignored = sum(exchange.ack.get("ignored", 0) for exchange in exchanges)
    return len(distinct), applied, ignored
