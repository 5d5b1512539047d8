"""Slow and surplus clients against a real relay process (uvicorn, httptools, uvloop).

200 connections attack at once: 100 trickle header lines forever (slowloris), 50 declare a
body on ``/relay/batch`` and trickle it, 50 do the same on an unknown path (answered at once,
body never read). Each is closed within its deadline (``limits.header_timeout`` or
``limits.body_timeout``) while ordinary requests keep being answered.
Oversized headers get 431, and connections past ``limits.max_connections`` are closed at once.

The time bounds asserted are generous liveness checks (a deadline plus seconds of slack); the
measurements themselves belong to ``benchmarks/slow_clients.py``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from commander_os.relay._connections import SWEEP_SECONDS
from commander_os.relay._process import RelayProcess

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
#: Slack on every deadline: scheduling on a loaded 2-vCPU machine, never seconds more.
SLACK = 3.0
TRICKLE_SECONDS = 0.2


@dataclass
class Slow:
    """One attacking connection: what it sent first, what it trickles, what it got back."""

    opening: bytes
    drip: bytes
    closed_after: float | None = None
    answer: bytes = b""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def attack(port: int, slow: Slow) -> None:
    """Send ``slow.opening``, then ``slow.drip`` every TRICKLE_SECONDS until the relay closes."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(slow.opening)

    async def trickle() -> None:
        while not writer.is_closing():
            await asyncio.sleep(TRICKLE_SECONDS)
            writer.write(slow.drip)
            try:
                await writer.drain()
            except ConnectionError:
                return

    dripping = asyncio.create_task(trickle())
    try:
        while chunk := await reader.read(65536):
            slow.answer += chunk
    except ConnectionError:
        pass
    slow.closed_after = time.monotonic() - started
    dripping.cancel()
    writer.close()


async def ordinary_traffic(url: str, seconds: float) -> list[int]:
    """Requests an agent would make, one after the other, for ``seconds``."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while time.monotonic() < deadline:
            statuses.append((await http.get("/health")).status_code)
            statuses.append((await http.post("/relay/query", json={"limit": 5})).status_code)
            await asyncio.sleep(0.02)
    return statuses


def attackers() -> tuple[list[Slow], list[Slow], list[Slow]]:
    head = b"POST /relay/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body_head = (
        b"Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    headers = [Slow(head, b"X-Slow: 1\r\n") for _ in range(100)]
    bodies = [
        Slow(b"POST /relay/batch HTTP/1.1\r\n" + body_head + b'{"agent_id"', b" ")
        for _ in range(50)
    ]
    unread = [Slow(b"POST /nowhere HTTP/1.1\r\n" + body_head + b"{", b" ") for _ in range(50)]
    return headers, bodies, unread


def test_200_slow_connections_are_cut_off_while_requests_are_served(tmp_path: Path) -> None:
    limits = {"header_timeout": HEADER_TIMEOUT, "body_timeout": BODY_TIMEOUT}
    env = {"COMMANDER_OS_LIMITS": orjson.dumps(limits).decode()}
    headers, bodies, unread = attackers()
    with RelayProcess(data_dir=tmp_path / "relay", env=env) as relay:

        async def run() -> list[int]:
            attacks = [attack(relay.port, slow) for slow in (*headers, *bodies, *unread)]
            traffic = ordinary_traffic(relay.url, BODY_TIMEOUT + 1)
            *_, statuses = await asyncio.wait_for(asyncio.gather(*attacks, traffic), 60)
            return statuses

        statuses = asyncio.run(run())
        with httpx.Client(base_url=relay.url) as http:
            assert http.get("/health").status_code == 200
    assert len(statuses) >= 20
    assert set(statuses) == {200}
    for slow in headers:
        assert slow.closed_after is not None
        assert HEADER_TIMEOUT <= slow.closed_after < HEADER_TIMEOUT + SWEEP_SECONDS + SLACK
        assert slow.answer.startswith(b"HTTP/1.1 408 ")
    for slow in bodies:
        assert slow.closed_after is not None
        assert BODY_TIMEOUT <= slow.closed_after < BODY_TIMEOUT + SWEEP_SECONDS + SLACK
        assert slow.answer.startswith(b"HTTP/1.1 408 ")
        assert b"body_timeout" in slow.answer
    for slow in unread:
        assert slow.closed_after is not None
        assert BODY_TIMEOUT <= slow.closed_after < BODY_TIMEOUT + SWEEP_SECONDS + SLACK
        assert slow.answer.startswith(b"HTTP/1.1 404 ")  # answered at once, body never read


def test_oversized_headers_get_431(tmp_path: Path) -> None:
    env = {"COMMANDER_OS_LIMITS": '{"max_header_bytes": 16384}'}
    with RelayProcess(data_dir=tmp_path / "relay", env=env) as relay:

        async def send_big_headers() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            # ~20 KB of header lines, never finished, in one write: bytes the relay has not
            # read when it closes would make the close a reset, which can discard its answer.
            filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 40) for i in range(400))
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + filler)
            answer = await reader.read(65536)
            writer.close()
            return answer

        answer = asyncio.run(asyncio.wait_for(send_big_headers(), 30))
        assert answer.startswith(b"HTTP/1.1 431 ")
        with httpx.Client(base_url=relay.url) as http:
            assert http.get("/health").status_code == 200


@pytest.mark.parametrize("bound", [20])
def test_connections_past_the_bound_are_closed_at_once(tmp_path: Path, bound: int) -> None:
    limits = {"max_connections": bound, "header_timeout": 2.0}
    env = {"COMMANDER_OS_LIMITS": orjson.dumps(limits).decode()}
    with RelayProcess(data_dir=tmp_path / "relay", env=env) as relay:

        async def saturate() -> tuple[float, bytes]:
            idle = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(bound)]
            await asyncio.sleep(0.2)  # all accepted
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            try:
                answer = await reader.read(65536)
            except ConnectionError:
                answer = b""
            refused_after = time.monotonic() - started
            writer.close()
            for _, idle_writer in idle:
                idle_writer.close()
            return refused_after, answer

        refused_after, answer = asyncio.run(asyncio.wait_for(saturate(), 30))
        assert answer == b""  # closed, nothing read, nothing answered
        assert refused_after < 2.0  # before the idle ones' header deadline
        with httpx.Client(base_url=relay.url) as http:
            assert http.get("/health").status_code == 200  # the idle ones are gone
