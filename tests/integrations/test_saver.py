"""CommanderSaver in the main suite: a real graph, history, filters, replication capture.
(LangGraph's conformance suite runs in tests/integrations/external.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from commander_os.integrations import IntegrationStorage
from commander_os.integrations.examples.langgraph_two_machines import build_graph
from commander_os.integrations.langgraph import CommanderSaver, CommanderStore

MakeStorage = Callable[..., IntegrationStorage]
CONFIG: Any = {"configurable": {"thread_id": "t1"}}


def test_a_graph_keeps_its_thread_across_saver_instances(
    make_integration_storage: MakeStorage,
) -> None:
    storage = make_integration_storage()
    graph = build_graph(CommanderSaver(storage), CommanderStore(storage))
    graph.invoke({"notes": ["one"]}, CONFIG)
    graph.invoke({"notes": ["two"]}, CONFIG)
    again = build_graph(CommanderSaver(storage), CommanderStore(storage))
    state = again.invoke({"notes": ["three"]}, CONFIG)
    assert state == {"notes": ["one", "two", "three"], "turn": 3}
    history = list(again.get_state_history(CONFIG))
    assert len(history) == 9  # input + loop checkpoints of three turns
    assert history[0].values["turn"] == 3


def test_list_filters_metadata_in_sql(make_integration_storage: MakeStorage) -> None:
    saver = CommanderSaver(make_integration_storage())
    parent = None
    for step, source in enumerate(["input", "loop", "loop", "update"]):
        config: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        if parent:
            config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
        checkpoint = empty_checkpoint()
        parent = saver.put(
            config, checkpoint, {"source": source, "step": step, "tags": {"a": 1}}, {}
        )
    listed = list(saver.list({"configurable": {"thread_id": "t"}}, filter={"source": "loop"}))
    assert [t.metadata["step"] for t in listed] == [2, 1]
    assert (
        next(iter(saver.list(None, filter={"tags": {"a": 1}, "step": 3}))).metadata["source"]
        == "update"
    )
    assert list(saver.list(None, filter={"tags": {}})) == []  # exact equality, not a subset
    newest = next(iter(saver.list(None, limit=1)))
    older = list(saver.list(None, before=newest.config))
    assert [t.metadata["step"] for t in older] == [2, 1, 0]


def test_every_checkpoint_and_write_is_captured(
    make_integration_storage: MakeStorage, dead_relay_url: str
) -> None:
    # compact_outbox off: the test counts every captured change in the queue.
    storage = make_integration_storage(
        enable_htpc=True, htpc_url=dead_relay_url, compact_outbox=False, close_timeout=0
    )
    saver = CommanderSaver(storage)
    stored = saver.put(
        {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}, empty_checkpoint(), {}, {}
    )
    saver.put_writes(stored, [("a", 1), ("b", {"x": 2})], task_id="task")
    assert storage.get_sync_queue_size() == 3
    saver.delete_thread("t")
    assert storage.get_sync_queue_size() == 6
    with pytest.raises(ValueError, match="unknown prune strategy"):
        saver.prune(["t"], strategy="keep_oldest")


def test_async_api_runs_a_graph(make_integration_storage: MakeStorage) -> None:
    storage = make_integration_storage()
    graph = build_graph(CommanderSaver(storage), CommanderStore(storage))

    async def run() -> Any:
        await graph.ainvoke({"notes": ["one"]}, CONFIG)
        return await graph.ainvoke({"notes": ["two"]}, CONFIG)

    assert asyncio.run(run())["notes"] == ["one", "two"]


def test_versions_increase_and_differ(make_integration_storage: MakeStorage) -> None:
    saver = CommanderSaver(make_integration_storage())
    first = saver.get_next_version(None, None)
    second = saver.get_next_version(first, None)
    assert first < second
    assert second.startswith("0" * 31 + "2.")
    assert saver.get_next_version(first, None) != second
