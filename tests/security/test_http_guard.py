"""The relay against web pages and spoofed headers (its HTTP guard), mostly in no-auth mode.

* A foreign ``Host`` (DNS rebinding) gets 400, a foreign ``Origin`` or a cross-site fetch 403,
  a ``POST`` that is not ``application/json`` (which a page could send without a CORS
  preflight) 415; each changes nothing. Compressed JSON bodies still work.
* With auth on the same checks hold, a valid token or not.
* ``X-Forwarded-For`` counts only from ``relay.trusted_proxies``: a spoofed one neither dodges
  the rate limit in process nor through a real uvicorn server (which would otherwise believe
  it from 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_helpers import SECRET, all_records, bearer, record, relay_client, token

from commander_os.config import LimitsConfig, RelayConfig
from commander_os.relay import create_app
from commander_os.relay._process import RelayProcess
from commander_os.relay.central import CentralStore, store_for_config

pytestmark = pytest.mark.anyio

FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:8001",
    "localhost.evil.example",
    "127.0.0.1.nip.io",
    "127.0.0.2",
    "0.0.0.0",
    "",
]
LOOPBACK_HOSTS = ["localhost", "LOCALHOST:8001", "127.0.0.1", "127.0.0.1:8001", "[::1]:8001"]
NOT_JSON = [
    None,
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonp",
    "application/json-seq",
]
WRITES = [
    ("/relay/immediate", record("agent-a", "k", 1)),
    ("/relay/batch", {"agent_id": "agent-a", "records": [record("agent-a", "k", 1)]}),
]


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    store = store_for_config(RelayConfig(agent_storage_dir=tmp_path / "relay"))
    await store.open()
    yield store
    await store.close()


def make_app(store: CentralStore, tmp_path: Path, **settings: Any) -> Any:
    return create_app(RelayConfig(agent_storage_dir=tmp_path / "relay", **settings), store=store)


async def test_a_foreign_host_is_400_and_changes_nothing(
    store: CentralStore, tmp_path: Path
) -> None:
    async with relay_client(make_app(store, tmp_path)) as relay:
        for host in FOREIGN_HOSTS:
            for path, body in WRITES:
                answer = await relay.post(path, json=body, headers={"host": host})
                assert answer.status_code == 400, (host, answer.text)
                assert answer.json()["error"] == "invalid_host"
            for path in ("/relay/changes", "/relay/agents", "/health", "/metrics", "/"):
                assert (await relay.get(path, headers={"host": host})).status_code == 400
        assert await all_records(store) == []
        for version, host in enumerate(LOOPBACK_HOSTS, 1):
            answer = await relay.post(
                "/relay/immediate", json=record("agent-a", "k", version), headers={"host": host}
            )
            assert answer.status_code == 200, (host, answer.text)


async def test_allowed_hosts_names_wildcards_and_any(store: CentralStore, tmp_path: Path) -> None:
    app = make_app(store, tmp_path, allowed_hosts=["relay.example.com", "*.corp.example"])
    cases = {
        "relay.example.com": 200,
        "Relay.Example.com:443": 200,
        "a.corp.example": 200,
        "b.a.corp.example:8001": 200,
        "127.0.0.1:8001": 200,  # the address it listens on stays allowed
        "corp.example": 400,
        "evilcorp.example": 400,
        "localhost": 400,  # the list replaces the loopback defaults
    }
    async with relay_client(app) as relay:
        for host, status in cases.items():
            answer = await relay.get("/relay/agents", headers={"host": host})
            assert answer.status_code == status, host
    async with relay_client(make_app(store, tmp_path, allowed_hosts=["*"])) as relay:
        assert (
            await relay.get("/relay/agents", headers={"host": "any.example"})
        ).status_code == 200


async def test_posts_must_say_application_json(store: CentralStore, tmp_path: Path) -> None:
    async with relay_client(make_app(store, tmp_path)) as relay:
        for content_type in NOT_JSON:
            headers = {"content-type": content_type} if content_type else {}
            for path, body in [*WRITES, ("/relay/query", {})]:
                request = relay.build_request("POST", path, content=orjson.dumps(body))
                request.headers.pop("content-type", None)
                request.headers.update(headers)
                answer = await relay.send(request)
                assert answer.status_code == 415, (content_type, path)
                assert answer.json()["error"] == "unsupported_media_type"
        assert await all_records(store) == []
        for version, content_type in enumerate(
            ["application/json", "application/json; charset=utf-8", "Application/JSON"], 1
        ):
            answer = await relay.post(
                "/relay/immediate",
                content=orjson.dumps(record("agent-a", "k", version)),
                headers={"content-type": content_type},
            )
            assert answer.status_code == 200, content_type


async def test_compressed_json_bodies_still_work(store: CentralStore, tmp_path: Path) -> None:
    async with relay_client(make_app(store, tmp_path)) as relay:
        for version, (encoding, compress) in enumerate(
            [("gzip", gzip.compress), ("zstd", zstandard.ZstdCompressor().compress)], 1
        ):
            body = {"agent_id": "agent-a", "records": [record("agent-a", encoding, version)]}
            answer = await relay.post(
                "/relay/batch",
                content=compress(orjson.dumps(body)),
                headers={"content-type": "application/json", "content-encoding": encoding},
            )
            assert answer.status_code == 200, answer.text
    assert {row[2] for row in await all_records(store)} == {"gzip", "zstd"}


async def test_foreign_origins_and_cross_site_fetches_are_403(
    store: CentralStore, tmp_path: Path
) -> None:
    refused = [
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"origin": "http://[::1"},
        {"origin": "http://localhost:3000"},  # another local page is another origin
        {"origin": "http://localhost", "host": "localhost:8001"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ]
    async with relay_client(make_app(store, tmp_path)) as relay:
        for headers in refused:
            write = await relay.post("/relay/immediate", json=record("agent-a"), headers=headers)
            read = await relay.get("/relay/changes", headers=headers)
            for answer in (write, read):
                assert answer.status_code == 403, headers
                assert answer.json()["error"] == "forbidden_origin"
        assert await all_records(store) == []
        same = {"origin": "http://localhost", "sec-fetch-site": "same-origin"}
        assert (await relay.post("/relay/query", json={}, headers=same)).status_code == 200
        typed = {"sec-fetch-site": "none"}  # the user typed the address
        assert (await relay.get("/relay/changes", headers=typed)).status_code == 200


async def test_with_auth_on_the_same_checks_hold_for_valid_tokens(
    store: CentralStore, tmp_path: Path
) -> None:
    app = make_app(store, tmp_path, auth=True, secret=SECRET)
    own = bearer(token("agent-a"))
    async with relay_client(app) as relay:
        cases = [
            ({**own, "host": "evil.example"}, "application/json", 400),
            ({**own, "origin": "http://evil.example"}, "application/json", 403),
            (own, "text/plain", 415),
        ]
        for headers, content_type, status in cases:
            answer = await relay.post(
                "/relay/immediate",
                content=orjson.dumps(record("agent-a")),
                headers={**headers, "content-type": content_type},
            )
            assert answer.status_code == status, headers
        assert await all_records(store) == []
        assert (
            await relay.post("/relay/immediate", json=record("agent-a"), headers=own)
        ).is_success


async def count_limited(relay: httpx.AsyncClient, forwarded: list[str]) -> int:
    answers = [
        await relay.post("/relay/query", json={}, headers={"x-forwarded-for": value})
        for value in forwarded
    ]
    assert all(a.status_code in (200, 429) for a in answers)
    return sum(a.status_code == 429 for a in answers)


async def test_a_spoofed_forwarded_for_does_not_dodge_the_rate_limit(
    store: CentralStore, tmp_path: Path
) -> None:
    limits = LimitsConfig(requests_per_second=5)
    spoofed = [f"203.0.113.{i}" for i in range(20)]
    async with relay_client(make_app(store, tmp_path, limits=limits)) as relay:
        assert await count_limited(relay, spoofed) >= 10  # one bucket: the socket's address
    trusting = make_app(store, tmp_path, limits=limits, trusted_proxies=["10.0.0.0/8"])
    async with relay_client(trusting, client=("192.0.2.7", 1)) as untrusted_peer:
        assert await count_limited(untrusted_peer, spoofed) >= 10
    async with relay_client(trusting, client=("10.0.0.1", 1)) as proxy:
        # Through the proxy each client has its own bucket...
        assert await count_limited(proxy, spoofed) == 0
        # ...and what a client wrote left of the proxy's entry is not believed.
        assert (
            await count_limited(proxy, [f"198.51.100.{i}, 203.0.113.99" for i in range(20)]) >= 10
        )
        # Garbage where the proxy writes: the proxy's own address is the key.
        assert await count_limited(proxy, [f"nonsense-{i}" for i in range(20)]) >= 10


def test_uvicorn_does_not_believe_forwarded_for_either(tmp_path: Path) -> None:
    """uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told not to: a real server."""
    env = {"COMMANDER_OS_LIMITS": '{"requests_per_second": 3}'}
    with RelayProcess(data_dir=tmp_path / "relay", env=env) as relay, httpx.Client() as http:
        answers = [
            http.post(
                relay.url + "/relay/query",
                json={},
                headers={"x-forwarded-for": f"203.0.113.{i}"},
            ).status_code
            for i in range(20)
        ]
    assert set(answers) <= {200, 429}
    assert answers.count(429) >= 10


HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    headers=st.dictionaries(
        st.sampled_from(
            ["host", "origin", "content-type", "x-forwarded-for", "sec-fetch-site", "authorization"]
        ),
        HEADER_TEXT,
    ),
    method=st.sampled_from(["GET", "POST"]),
    path=st.sampled_from(["/relay/query", "/relay/changes", "/health", "/relay/immediate"]),
)
def test_no_header_value_gets_a_server_error(
    headers: dict[str, str], method: str, path: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async def call() -> int:
        folder = tmp_path_factory.mktemp("fuzz")
        config = RelayConfig(agent_storage_dir=folder, trusted_proxies=["127.0.0.0/8"])
        store = store_for_config(config)
        await store.open()
        try:
            async with relay_client(create_app(config, store=store)) as relay:
                body = orjson.dumps({}) if method == "POST" else None
                raw = {name: value.encode("latin-1") for name, value in headers.items()}
                answer = await relay.request(method, path, content=body, headers=raw)
                return answer.status_code
        finally:
            await store.close()

    assert asyncio.run(call()) < 500
