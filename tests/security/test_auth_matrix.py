"""The authorization matrix: every endpoint x every bad credential x agent ids in path, body,
filter and mixed batches. Counts what was accepted where it should not have been; must be 0.

Victim data belongs to ``agent-a``; the attacker holds a valid token for ``agent-b`` that may
read only ``agent-b`` (and ``agent-c``), or no valid token at all.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from security_helpers import ANOTHER_SECRET, bearer, record, token

from commander_os.protocol import ChangeRecord, QueryRequest
from commander_os.relay.central import CentralStore

pytestmark = pytest.mark.anyio

VICTIM, ATTACKER, FRIEND = "agent-a", "agent-b", "agent-c"


def bad_credentials() -> dict[str, dict[str, str]]:
    """Every way of not holding a valid token, as request headers."""
    expired = token(VICTIM, now=1_000_000, expires_at=1_000_060)
    good = token(VICTIM)
    prefix, claims, signature = good.split(".")
    admin_claims = token(VICTIM, admin=True).split(".")[1]
    return {
        "missing": {},
        "garbage": bearer("garbage"),
        "empty bearer": {"authorization": "Bearer "},
        "basic scheme": {"authorization": "Basic YWdlbnQtYTpwYXNzd29yZA=="},
        "token without scheme": {"authorization": good},
        "expired": bearer(expired),
        "wrong secret": bearer(token(VICTIM, secret=ANOTHER_SECRET)),
        "wrong secret admin": bearer(token(VICTIM, secret=ANOTHER_SECRET, admin=True)),
        "claims swapped (admin) under old signature": bearer(
            f"{prefix}.{admin_claims}.{signature}"
        ),
        "signature stripped": bearer(f"{prefix}.{claims}."),
        "alg none style": bearer(f"{prefix}.{claims}"),
        "unknown version": bearer(f"cos0.{claims}.{signature}"),
    }


def write_requests(own: str) -> list[tuple[str, str, Any]]:
    """(name, path, json body) for writes that touch the victim's records."""
    return [
        ("immediate, victim's record", "/relay/immediate", record(VICTIM)),
        (
            "immediate, victim delete",
            "/relay/immediate",
            {**record(VICTIM), "op": "delete", "data": None},
        ),
        ("batch, victim's", "/relay/batch", {"agent_id": VICTIM, "records": [record(VICTIM)]}),
        (
            "batch, own id + victim record",
            "/relay/batch",
            {"agent_id": own, "records": [record(own, "x"), record(VICTIM)]},
        ),
        (
            "batch, victim id + own records",
            "/relay/batch",
            {"agent_id": VICTIM, "records": [record(own, "x")]},
        ),
        (
            "batch, victim record last of many",
            "/relay/batch",
            {
                "agent_id": own,
                "records": [*(record(own, f"k{i}") for i in range(5)), record(VICTIM)],
            },
        ),
        (
            "batch, victim record, slow path (non-ASCII key)",
            "/relay/batch",
            {"agent_id": own, "records": [record(own, "é"), record(VICTIM, "é")]},
        ),
    ]


def read_requests() -> list[tuple[str, str, str, Any]]:
    """(name, method, path, json body) for reads that name the victim or no agent at all."""
    return [
        ("query, no filter", "POST", "/relay/query", {}),
        ("query, victim", "POST", "/relay/query", {"agent_id": VICTIM}),
        ("query, own + victim", "POST", "/relay/query", {"agent_id": [ATTACKER, VICTIM]}),
        ("query, victim key", "POST", "/relay/query", {"agent_id": VICTIM, "key": "k"}),
        ("changes, no filter", "GET", "/relay/changes", None),
        ("changes, victim", "GET", f"/relay/changes?agent_id={VICTIM}", None),
        ("agents", "GET", "/relay/agents", None),
        ("metrics", "GET", "/metrics", None),
        ("dashboard", "GET", "/", None),
    ]


async def snapshot(store: CentralStore) -> tuple[Any, ...]:
    page = await store.query(QueryRequest(include_deleted=True, limit=1000))
    return tuple((r.agent_id, r.key, r.version, r.deleted) for r in page.records)


@pytest.fixture
async def seeded(auth_store: CentralStore) -> CentralStore:
    for agent in (VICTIM, ATTACKER, FRIEND):
        await auth_store.apply([ChangeRecord.model_validate(record(agent, "k", 5))])
    return auth_store


def leaked(answer: httpx.Response, readable: set[str]) -> int:
    """Records (or agents) of agents outside ``readable`` in a 200 answer."""
    if answer.status_code != 200 or not answer.headers["content-type"].startswith(
        "application/json"
    ):
        return 0
    body = answer.json()
    rows = body.get("records", body.get("agents", []))
    return sum(1 for row in rows if row["agent_id"] not in readable)


async def send(
    relay: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    content = None if body is None else orjson.dumps(body)
    return await relay.request(method, path, content=content, headers=headers)


async def test_authorization_matrix_accepts_nothing_it_should_not(
    auth_relay: httpx.AsyncClient, seeded: CentralStore
) -> None:
    before = await snapshot(seeded)
    attacker = bearer(token(ATTACKER, read=[FRIEND]))
    tried = accepted_wrongly = not_json = 0
    wrong: list[str] = []

    # 1. No valid credential: every endpoint but /health answers 401, whatever the request.
    for label, headers in bad_credentials().items():
        requests = [("POST", path, body, name) for name, path, body in write_requests(ATTACKER)]
        requests += [(m, p, b, n) for n, m, p, b in read_requests()]
        for method, path, body, name in requests:
            answer = await send(auth_relay, method, path, body, headers)
            tried += 1
            not_json += answer.headers.get("content-type") != "application/json"
            if answer.status_code != 401:
                accepted_wrongly += 1
                wrong.append(f"{label} / {name}: {answer.status_code}")

    # 2. A valid token of another agent: writes 403, reads of the victim 403 or filtered out.
    for name, path, body in write_requests(ATTACKER):
        answer = await send(auth_relay, "POST", path, body, attacker)
        tried += 1
        if answer.status_code != 403:
            accepted_wrongly += 1
            wrong.append(f"other agent's token / {name}: {answer.status_code}")
    for name, method, path, body in read_requests():
        answer = await send(auth_relay, method, path, body, attacker)
        tried += 1
        leaks = leaked(answer, {ATTACKER, FRIEND})
        if leaks or answer.status_code not in (200, 403):
            accepted_wrongly += 1
            wrong.append(f"other agent's token / {name}: {answer.status_code}, {leaks} leaked")
        names_victim = VICTIM in path or (isinstance(body, dict) and VICTIM in str(body))
        if answer.headers.get("content-type", "").startswith("text/html") and VICTIM in answer.text:
            accepted_wrongly += 1
            wrong.append(f"other agent's token / {name}: the page shows {VICTIM}")
        # The dashboard shows any token what it may read; /metrics is for admins only.
        if (names_victim or path == "/metrics") and answer.status_code != 403:
            accepted_wrongly += 1
            wrong.append(f"other agent's token / {name}: {answer.status_code}, expected 403")

    after = await snapshot(seeded)
    changed = len(set(after) ^ set(before))
    print(
        f"\nauthorization matrix: {tried} requests, accepted where they should not: "
        f"{accepted_wrongly}, records changed: {changed}, non-JSON errors: {not_json}"
    )
    assert wrong == []
    assert accepted_wrongly == 0
    assert changed == 0
    assert not_json == 0


async def test_positive_controls_the_matrix_is_not_vacuous(
    auth_relay: httpx.AsyncClient, seeded: CentralStore
) -> None:
    own = bearer(token(ATTACKER, read=[FRIEND]))
    answers = [
        await send(auth_relay, "POST", "/relay/immediate", record(ATTACKER, "new", 20), own),
        await send(
            auth_relay,
            "POST",
            "/relay/batch",
            {
                "agent_id": ATTACKER,
                "records": [record(ATTACKER, "b1", 21), record(ATTACKER, "é", 22)],
            },
            own,
        ),
        await send(auth_relay, "POST", "/relay/query", {"agent_id": FRIEND}, own),
        await send(auth_relay, "GET", f"/relay/changes?agent_id={ATTACKER}", None, own),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    everything = await send(auth_relay, "POST", "/relay/query", {}, own)
    assert {r["agent_id"] for r in everything.json()["records"]} == {ATTACKER, FRIEND}
    agents = await send(auth_relay, "GET", "/relay/agents", None, own)
    assert {a["agent_id"] for a in agents.json()["agents"]} == {ATTACKER, FRIEND}

    reader = bearer(token(FRIEND))  # default ACL: reads every agent, writes only its own
    assert len((await send(auth_relay, "POST", "/relay/query", {}, reader)).json()["records"]) >= 3
    admin = bearer(token("ops", admin=True))
    assert (await send(auth_relay, "GET", "/metrics", None, admin)).status_code == 200
    assert (await send(auth_relay, "GET", "/", None, admin)).status_code == 200
    assert (
        await send(auth_relay, "POST", "/relay/immediate", record(VICTIM), admin)
    ).status_code == 403


async def test_health_and_docs_stay_open_and_hold_no_records(
    auth_relay: httpx.AsyncClient, seeded: CentralStore
) -> None:
    health = await auth_relay.get("/health")
    assert health.status_code == 200
    assert VICTIM not in health.text
    assert (await auth_relay.get("/openapi.json")).status_code == 200


async def test_errors_never_echo_the_token(
    auth_relay: httpx.AsyncClient, seeded: CentralStore
) -> None:
    forged = token(VICTIM, secret=ANOTHER_SECRET)
    expired = token(VICTIM, now=1_000_000, expires_at=1_000_060)
    for value in (forged, expired, forged + "x", "cos1." + "A" * 300):
        answer = await auth_relay.post("/relay/query", json={}, headers=bearer(value))
        assert answer.status_code == 401
        assert answer.json()["error"] == "unauthorized"
        assert answer.headers["www-authenticate"].startswith("Bearer")
        for part in value.split("."):
            if len(part) > 8:
                assert part not in answer.text


@pytest.mark.parametrize(
    "extra",
    [{"rev": 5}, {"received_at": "2026-01-01T00:00:00Z"}, {"deleted": True}, {"last_seen": 1}],
)
async def test_server_owned_fields_in_a_record_are_rejected(
    auth_relay: httpx.AsyncClient, seeded: CentralStore, extra: dict[str, Any]
) -> None:
    before = await snapshot(seeded)
    own = bearer(token(VICTIM))
    single = await auth_relay.post(
        "/relay/immediate", json={**record(VICTIM, "s", 50), **extra}, headers=own
    )
    batch = await auth_relay.post(
        "/relay/batch",
        json={"agent_id": VICTIM, "records": [{**record(VICTIM, "s", 50), **extra}]},
        headers=own,
    )
    top = await auth_relay.post(
        "/relay/batch",
        json={"agent_id": VICTIM, "records": [record(VICTIM, "s", 50)], **extra},
        headers=own,
    )
    assert [single.status_code, batch.status_code, top.status_code] == [422, 422, 422]
    assert await snapshot(seeded) == before
