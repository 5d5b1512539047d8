"""Property: replaying any batch, in any order, any number of times, equals applying it once.

For every central-store backend: whatever the delivery (duplicates, reordering, arbitrary
batching, concurrent requests), the store ends up holding, per key, the record with the highest
version — as if each record had been applied once, in version order.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relay_helpers import make_record

from commander_os.protocol import ChangeRecord, QueryRequest
from commander_os.relay.central import CentralStore

KEYS = ["a", "b", "c", "d"]
TABLES = ["kv", "notes"]

# One write per (table, key, version): a version names one write, so it always has one content.
writes = st.lists(
    st.tuples(st.sampled_from(TABLES), st.sampled_from(KEYS), st.integers(1, 40), st.booleans()),
    min_size=1,
    max_size=30,
    unique_by=lambda w: (w[0], w[1], w[2]),
)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[str, str, int, bool]], list[list[int]]]:
    """Some writes, and how they arrive: a shuffled sequence with repeats, cut into batches."""
    items = draw(writes)
    sequence = draw(st.permutations(range(len(items))))
    repeats = draw(st.lists(st.sampled_from(range(len(items))), max_size=30))
    order = draw(st.permutations([*sequence, *repeats]))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=6)))
    bounds = [0, *cuts, len(order)]
    batches = [list(order[lo:hi]) for lo, hi in itertools.pairwise(bounds) if lo < hi]
    return items, batches


def to_record(agent_id: str, write: tuple[str, str, int, bool]) -> ChangeRecord:
    table, key, version, is_delete = write
    data = None if is_delete else {"table": table, "key": key, "v": version}
    return make_record(key, version, data, agent_id=agent_id, table=table)


async def state_of(store: CentralStore, agent_id: str) -> dict[tuple[str, str], Any]:
    page = await store.query(QueryRequest(agent_id=agent_id, include_deleted=True, limit=1000))
    assert page.next_cursor is None
    return {(r.table, r.key): (r.version, r.deleted, r.data) for r in page.records}


def test_replay_in_any_order_equals_applying_once(
    central_factory: Callable[[], CentralStore],
) -> None:
    loop = asyncio.new_event_loop()
    store = central_factory()
    loop.run_until_complete(store.open())
    agent_numbers = itertools.count()

    @settings(
        max_examples=75,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(delivery=deliveries(), concurrent=st.booleans())
    def check(
        delivery: tuple[list[tuple[str, str, int, bool]], list[list[int]]], concurrent: bool
    ) -> None:
        items, batches = delivery
        agent_id = f"agent-{next(agent_numbers)}"  # a fresh agent: examples stay independent
        records = [to_record(agent_id, write) for write in items]

        async def deliver() -> None:
            requests = [store.apply([records[i] for i in batch]) for batch in batches]
            if concurrent:
                await asyncio.gather(*requests)
            else:
                for request in requests:
                    await request

        loop.run_until_complete(deliver())

        expected: dict[tuple[str, str], Any] = {}
        for record in sorted(records, key=lambda r: r.version):  # once, in version order
            expected[(record.table, record.key)] = (
                record.version,
                record.op == "delete",
                record.data,
            )
        assert loop.run_until_complete(state_of(store, agent_id)) == expected
        (summary,) = [s for s in loop.run_until_complete(store.agents()) if s.agent_id == agent_id]
        assert summary.highest_version == max(r.version for r in records)
        assert summary.record_count == sum(1 for v in expected.values() if not v[1])

    try:
        check()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
