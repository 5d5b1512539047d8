"""Cutting off slow clients: what it costs, how well it works (`python -m benchmarks.slow_clients`).

1. **Cost.** The relay's protocol (uvicorn's httptools protocol plus a deadline per connection
   and a sweep, ``commander_os/relay/_connections.py``) against uvicorn's plain httptools
   protocol: the same requests to two relay processes, interleaved in rounds, comparing the
   median latency and the relay's CPU time per request.
2. **Effect.** 200 connections attack one relay at once (100 trickle header lines, 100 declare
   a body and trickle it) while one client sends ordinary queries: how late past its deadline
   each attacker is cut off, and the ordinary queries' latency before and during the attack.

Prints a small table; ``--json PATH`` writes the figures. Use ``--rounds`` to trade time for
precision. Pin nothing: compare only figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
ATTACKERS = 200


# ----------------------------------------------------------------------------- relay children


def child(argv: list[str]) -> None:
    """``child PLAIN DATA_DIR``: a relay on an ephemeral port; PLAIN=1 uses uvicorn's protocol."""
    from commander_os.config import LimitsConfig, RelayConfig
    from commander_os.relay import _server, serve

    plain, data_dir = argv[0] == "1", Path(argv[1])
    if plain:
        _server.guarded_protocol = lambda limits: "httptools"  # type: ignore[assignment]
    limits = LimitsConfig(header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT)
    serve(RelayConfig(port=0, agent_storage_dir=data_dir, limits=limits, log_level="error"))


class Relay:
    """A relay child process and its URL."""

    def __init__(self, plain: bool, data_dir: Path) -> None:
        argv = [sys.executable, "-m", "benchmarks.slow_clients", "child", str(int(plain))]
        self.process = subprocess.Popen(
            [*argv, str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            found = re.search(r"listening on (\S+)", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise SystemExit("relay did not start")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


# ------------------------------------------------------------------------------------ cost


def cost(workdir: Path, rounds: int, per_round: int = 300) -> dict[str, Any]:
    """Median latency and relay CPU per request of ``/relay/query``, guarded vs plain."""
    relays = {"guarded": Relay(False, workdir / "guarded"), "plain": Relay(True, workdir / "plain")}
    samples: dict[str, list[float]] = {name: [] for name in relays}
    cpu = dict.fromkeys(relays, 0.0)
    body = orjson.dumps({"agent_id": "nobody", "key": "k"})
    headers = {"content-type": "application/json"}
    try:
        clients = {name: httpx.Client(base_url=r.url) for name, r in relays.items()}
        for _ in range(rounds):
            for name in random.sample(list(relays), len(relays)):
                http, before = clients[name], relays[name].cpu_seconds()
                for _ in range(per_round):
                    started = time.perf_counter()
                    http.post("/relay/query", content=body, headers=headers).raise_for_status()
                    samples[name].append(time.perf_counter() - started)
                cpu[name] += relays[name].cpu_seconds() - before
    finally:
        for relay in relays.values():
            relay.stop()
    return {
        name: {
            "median_ms": statistics.median(values) * 1e3,
            "cpu_us_per_request": cpu[name] / len(values) * 1e6,
        }
        for name, values in samples.items()
    }


# ---------------------------------------------------------------------------------- effect


async def _attacker(port: int, opening: bytes) -> float:
    """Open, send ``opening``, trickle a byte every 0.2 s; seconds until the relay closed."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(opening)

    async def trickle() -> None:
        while not writer.is_closing():
            await asyncio.sleep(0.2)
            writer.write(b"X-Slow: 1\r\n" if opening.endswith(b"\r\n") else b" ")

    dripping = asyncio.create_task(trickle())
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    dripping.cancel()
    writer.close()
    return time.monotonic() - started


async def _ordinary(url: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url) as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            (await http.post("/relay/query", json={"limit": 5})).raise_for_status()
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
    return latencies


async def _attack(url: str, port: int) -> tuple[list[float], list[float], list[float]]:
    header = b"POST /relay/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body = header + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    heads = [_attacker(port, header) for _ in range(ATTACKERS // 2)]
    bodies = [_attacker(port, body) for _ in range(ATTACKERS // 2)]
    results = await asyncio.gather(
        asyncio.gather(*heads), asyncio.gather(*bodies), _ordinary(url, BODY_TIMEOUT + 1)
    )
    return list(results[0]), list(results[1]), results[2]


def effect(workdir: Path) -> dict[str, Any]:
    """How late the attackers are cut off, and ordinary latency before and during the attack."""
    relay = Relay(False, workdir / "attacked")
    try:
        before = asyncio.run(_ordinary(relay.url, 2.0))
        port = int(relay.url.rsplit(":", 1)[1])
        heads, bodies, during = asyncio.run(_attack(relay.url, port))
    finally:
        relay.stop()
    late_heads = [seconds - HEADER_TIMEOUT for seconds in heads]
    late_bodies = [seconds - BODY_TIMEOUT for seconds in bodies]
    return {
        "header_cut_late_s": {"median": statistics.median(late_heads), "max": max(late_heads)},
        "body_cut_late_s": {"median": statistics.median(late_bodies), "max": max(late_bodies)},
        "ordinary_median_ms": {
            "before": statistics.median(before) * 1e3,
            "during": statistics.median(during) * 1e3,
        },
        "ordinary_requests_during": len(during),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slow_clients")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="commander-slow-") as folder:
        figures = {"cost": cost(Path(folder), args.rounds), "effect": effect(Path(folder))}
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
