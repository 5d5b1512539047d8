"""A value near ``max_value_bytes`` is either refused by ``set()`` or accepted end to end.

The relay limits a record's data as shipped (the whole row, key and value), so the store counts
that envelope at ``set()``: a value just under the limit can never pass locally and be
dead-lettered later. A real relay with the same limit takes everything ``set()`` accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sync_helpers import WAIT, relay_records

from commander_os.errors import ValueTooLarge
from commander_os.relay import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

LIMIT = 4096


@pytest.fixture(scope="module")
def strict_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay whose value limit is ``LIMIT`` bytes."""
    env = {"COMMANDER_OS_RELAY_LIMITS__MAX_VALUE_BYTES": str(LIMIT)}
    relay = RelayProcess(data_dir=tmp_path_factory.mktemp("strict-relay"), env=env)
    relay.start()
    yield relay
    relay.stop()


def _value(size: int) -> str:
    """A string value whose JSON encoding is ``size`` bytes."""
    return "x" * (size - 2)


def _largest_accepted(store: AgentStorage, key: str) -> int:
    """The largest encoded value size ``set()`` accepts under ``key`` (it is stored)."""
    size = LIMIT
    while True:
        try:
            store.set(key, _value(size))
        except ValueTooLarge:
            size -= 1
        else:
            return size


@pytest.mark.parametrize("key", ["plain-key", 'quoted"key\\with\u0001escapes'])
def test_a_value_just_under_the_limit_is_refused_at_set_or_delivered(
    strict_relay: RelayProcess, tmp_path: Path, key: str
) -> None:
    agent = "value-limit-" + ("plain" if key == "plain-key" else "escaped")
    with AgentStorage(
        agent,
        tmp_path,
        htpc_url=strict_relay.url,
        enable_htpc=True,
        max_value_bytes=LIMIT,
        max_retry_count=1,  # a refusal would dead-letter at once
    ) as store:
        # Under the limit as a value, over it as shipped: refused here, with the reason.
        with pytest.raises(ValueTooLarge, match=r"as shipped with its key.*max_value_bytes"):
            store.set(key, _value(LIMIT - 1))
        largest = _largest_accepted(store, key)
        assert LIMIT - 100 < largest < LIMIT
        store.set("neighbour", {"n": 1})
        assert store.wait_for_sync(WAIT)
        health = store.health_check()
        assert health["dead_letters"] == 0, health
    stored = relay_records(strict_relay.url, [agent])
    assert orjson.dumps(stored[agent, key]["data"]["value"]) == orjson.dumps(_value(largest))
    assert stored[agent, "neighbour"]["data"]["value"] == {"n": 1}
