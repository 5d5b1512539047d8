"""The identity rule at the relay (protocol._delivery): every verdict, on both central stores.

Each test sends delivery bodies (``{"segments": [...]}``) to a relay app over a real store and
checks the answer and what the store then holds.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from commander_os.config import RelayConfig
from commander_os.protocol import QueryRequest, split_version
from commander_os.relay import create_app
from commander_os.relay.central import CentralStore

pytestmark = pytest.mark.anyio
_ids = itertools.count(1)


@pytest.fixture
async def store(central_factory: Callable[[], CentralStore]) -> AsyncIterator[CentralStore]:
    opened = central_factory()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def relay(store: CentralStore, tmp_path: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(RelayConfig(agent_storage_dir=tmp_path / "relay"), store=store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


def segment(
    incarnation: int,
    acked: int,
    base: int,
    seqs: list[int],
    *,
    agent: str = "agent-a",
    key: str = "k",
    segment_id: int | None = None,
    **flags: bool,
) -> dict[str, Any]:
    records = [
        {
            "table": "kv",
            "key": f"{key}{seq}",
            "op": "upsert",
            "data": {"value": seq},
            "seq": seq,
            "ts": "2026-11-27T02:33:27.123456Z",
        }
        for seq in seqs
    ]
    return {
        "agent_id": agent,
        "incarnation": incarnation,
        "acked": acked,
        "base": base,
        "segment_id": next(_ids) if segment_id is None else segment_id,
        "records": records,
        **flags,
    }


async def deliver(relay: httpx.AsyncClient, *segments: dict[str, Any]) -> list[dict[str, Any]]:
    answer = await relay.post("/relay/batch", json={"segments": list(segments)})
    assert answer.status_code == 200, answer.text
    acks: list[dict[str, Any]] = answer.json()["acks"]
    assert len(acks) == len(segments)
    return acks


async def granted(relay: httpx.AsyncClient, agent: str = "agent-a") -> int:
    (ack,) = await deliver(relay, segment(0, 0, 0, [], agent=agent))
    assert ack["verdict"] == "reincarnate"
    return int(ack["incarnation"])


async def held(store: CentralStore, agent: str = "agent-a") -> dict[str, tuple[int, int]]:
    page = await store.query(QueryRequest(agent_id=agent, include_deleted=True, limit=1000))
    return {r.key: split_version(r.version) for r in page.records}


async def test_a_new_store_is_granted_an_incarnation_then_applies(
    relay: httpx.AsyncClient, store: CentralStore
) -> None:
    (first,) = await deliver(relay, segment(0, 0, 0, [1, 2]))
    assert first["verdict"] == "reincarnate"
    assert first["applied"] == first["ignored"] == 0
    incarnation = first["incarnation"]
    assert incarnation >= 1
    (ack,) = await deliver(relay, segment(incarnation, 0, 0, [1, 2]))
    assert (ack["verdict"], ack["through"], ack["count"], ack["applied"]) == ("applied", 2, 2, 2)
    assert await held(store) == {"k1": (incarnation, 1), "k2": (incarnation, 2)}


async def test_contiguous_segments_apply_and_a_resend_is_harmless(
    relay: httpx.AsyncClient, store: CentralStore
) -> None:
    inc = await granted(relay)
    first = segment(inc, 0, 0, [1, 2, 3])
    assert (await deliver(relay, first))[0]["verdict"] == "applied"
    (again,) = await deliver(relay, first)  # the answer was lost: the same segment again
    assert (again["verdict"], again["applied"], again["ignored"]) == ("applied", 0, 3)
    (next_,) = await deliver(relay, segment(inc, 3, 3, [4]))
    assert (next_["verdict"], next_["through"]) == ("applied", 4)
    assert len(await held(store)) == 4


async def test_a_store_behind_the_relay_is_reincarnated_and_its_writes_win(
    relay: httpx.AsyncClient, store: CentralStore
) -> None:
    inc = await granted(relay)
    await deliver(relay, segment(inc, 0, 0, [1, 2, 3, 4, 5]))
    # A restored copy from when only seq 2 was acked writes seq 3 again, with other content.
    (ack,) = await deliver(relay, segment(inc, 2, 2, [3], key="k"))
    assert ack["verdict"] == "reincarnate"
    assert ack["incarnation"] > inc
    assert (await held(store))["k3"] == (inc, 3)  # nothing of the copy applied yet
    newer = ack["incarnation"]
    (resent,) = await deliver(relay, segment(newer, 2, 2, [3]))
    assert resent["verdict"] == "applied"
    assert (await held(store))["k3"] == (newer, 3)
    # The original, still running at the old incarnation, is fenced.
    (fenced,) = await deliver(relay, segment(inc, 5, 5, [6]))
    assert (fenced["verdict"], fenced["applied"]) == ("superseded", 0)
    assert fenced["incarnation"] == newer
    assert "k6" not in await held(store)


async def test_a_grant_whose_answer_was_lost_is_given_again_not_fenced(
    relay: httpx.AsyncClient, store: CentralStore
) -> None:
    inc = await granted(relay)
    await deliver(relay, segment(inc, 0, 0, [1, 2, 3]))
    # The store drafts again from seq 1 (its window voided): behind the relay, so a grant...
    behind = segment(inc, 1, 1, [2, 3], key="j")
    (first,) = await deliver(relay, behind)
    assert first["verdict"] == "reincarnate"
    # ... whose answer is lost. The same segment again gets the same grant: this is the store
    # the incarnation was granted to, not one that was taken over.
    (again,) = await deliver(relay, behind)
    assert (again["verdict"], again["incarnation"]) == ("reincarnate", first["incarnation"])
    (resent,) = await deliver(relay, segment(first["incarnation"], 1, 1, [2, 3], key="j"))
    assert resent["verdict"] == "applied"
    # A lost claim's answer likewise: one claim, one new incarnation.
    claim = segment(first["incarnation"], 3, 3, [], claim=True)
    (claimed,) = await deliver(relay, claim)
    (claimed_again,) = await deliver(relay, claim)
    assert claimed_again["verdict"] == "reincarnate"
    assert claimed_again["incarnation"] == claimed["incarnation"] > first["incarnation"]


async def test_a_claim_takes_the_agent_over(relay: httpx.AsyncClient) -> None:
    inc = await granted(relay)
    await deliver(relay, segment(inc, 0, 0, [1]))
    (claimed,) = await deliver(relay, segment(inc, 1, 1, [], claim=True))
    assert claimed["verdict"] == "reincarnate"
    assert claimed["incarnation"] > inc
    assert (await deliver(relay, segment(inc, 1, 1, [2])))[0]["verdict"] == "superseded"


async def test_a_relay_that_lost_acked_data_says_so(relay: httpx.AsyncClient) -> None:
    inc = await granted(relay)
    await deliver(relay, segment(inc, 0, 0, [1, 2]))
    # The store had 10 acked by this relay (which was then restored from an older copy).
    (ack,) = await deliver(relay, segment(inc, 10, 10, [11]))
    assert (ack["verdict"], ack["relay_seq_hi"], ack["applied"]) == ("regressed", 2, 0)
    (repair,) = await deliver(relay, segment(inc, 10, 10, [3, 10], repair=True))
    assert (repair["verdict"], repair["applied"]) == ("applied", 2)
    (resumed,) = await deliver(relay, segment(inc, 10, 10, [11]))
    assert resumed["verdict"] == "applied"


async def test_an_early_pipelined_segment_is_out_of_order(relay: httpx.AsyncClient) -> None:
    inc = await granted(relay)
    (early,) = await deliver(relay, segment(inc, 0, 5, [6, 7]))
    assert (early["verdict"], early["applied"]) == ("out_of_order", 0)
    assert (await deliver(relay, segment(inc, 0, 0, [1, 5])))[0]["verdict"] == "applied"
    assert (await deliver(relay, segment(inc, 0, 5, [6, 7])))[0]["verdict"] == "applied"


async def test_an_incarnation_from_another_relay_is_adopted(
    relay: httpx.AsyncClient, store: CentralStore
) -> None:
    (ack,) = await deliver(relay, segment(9, 4, 4, [5]))
    assert (ack["verdict"], ack["relay_incarnation"], ack["relay_seq_hi"]) == ("applied", 0, 0)
    assert (await held(store))["k5"] == (9, 5)


async def test_one_agents_conflict_does_not_hold_back_the_others(
    relay: httpx.AsyncClient, store: CentralStore
) -> None:
    a = await granted(relay, "agent-a")
    await granted(relay, "agent-b")
    b = await granted(relay, "agent-b")  # a second store of agent-b took over: b - 1 is fenced
    acks = await deliver(
        relay,
        segment(a, 0, 0, [1], agent="agent-a"),
        segment(b - 1, 0, 0, [1], agent="agent-b"),  # superseded
        segment(0, 0, 0, [1], agent="agent-c"),  # new: granted, nothing applied
    )
    assert [ack["verdict"] for ack in acks] == ["applied", "superseded", "reincarnate"]
    assert [ack["agent_id"] for ack in acks] == ["agent-a", "agent-b", "agent-c"]
    assert len(await held(store, "agent-a")) == 1
    assert await held(store, "agent-b") == {}


async def test_a_new_incarnation_is_above_every_version_held(relay: httpx.AsyncClient) -> None:
    # Versions from the wall-clock era (epoch << 32): a grant must still win over them.
    old = {
        "agent_id": "agent-a",
        "table": "kv",
        "key": "k",
        "op": "upsert",
        "data": {},
        "version": (60_000_000 << 32) | 7,
        "ts": "2026-01-01T00:00:00Z",
    }
    assert (await relay.post("/relay/immediate", json=old)).status_code == 200
    assert await granted(relay) == 60_000_001


async def test_malformed_segments_are_refused_whole(relay: httpx.AsyncClient) -> None:
    bad = [
        segment(1, 5, 4, [5]),  # acked past base
        segment(1, 0, 3, [3]),  # a seq not past base
        segment(1, 0, 0, [2, 1]),  # seqs out of order
        segment(1, 0, 0, [1], agent="Not An Id"),
    ]
    for body in bad:
        answer = await relay.post("/relay/batch", json={"segments": [body]})
        assert answer.status_code == 422, body


async def test_a_second_restore_of_one_backup_is_reincarnated_again(
    relay: httpx.AsyncClient, store: CentralStore
) -> None:
    inc = await granted(relay)
    await deliver(relay, segment(inc, 0, 0, [1, 2, 3, 4]))
    # The backup was taken at seq 2; its first restore takes over...
    (first,) = await deliver(relay, segment(inc, 2, 2, [3]))
    assert first["verdict"] == "reincarnate"
    await deliver(relay, segment(first["incarnation"], 2, 2, [3]))
    # ...and so does its second, behind where the old incarnation stood (not a twin).
    (second,) = await deliver(relay, segment(inc, 2, 2, [3]))
    assert second["verdict"] == "reincarnate"
    assert second["incarnation"] > first["incarnation"]
    (resent,) = await deliver(relay, segment(second["incarnation"], 2, 2, [3]))
    assert resent["verdict"] == "applied"
    assert (await held(store))["k3"] == (second["incarnation"], 3)
    # The first restore, now behind nothing but taken over, is fenced.
    (fenced,) = await deliver(relay, segment(first["incarnation"], 3, 3, [4]))
    assert fenced["verdict"] == "superseded"


async def test_revs_follow_the_write_order_within_a_segment(
    relay: httpx.AsyncClient, store: CentralStore
) -> None:
    inc = await granted(relay)
    keys = [chr(c) for c in range(ord("z"), ord("a") - 1, -1)]
    records = [
        {
            "table": "kv",
            "key": key,
            "op": "upsert",
            "data": {"value": key},
            "seq": seq,
            "ts": "2026-11-27T02:33:27Z",
        }
        for seq, key in enumerate(keys, start=1)
    ]
    body = {**segment(inc, 0, 0, []), "records": records}
    assert (await deliver(relay, body))[0]["applied"] == 26
    page = await store.query(QueryRequest(agent_id="agent-a", limit=100))
    assert [record.key for record in page.records] == keys
