"""A LangGraph agent with memory that starts on "machine A" and resumes on "machine B".

Run it (it starts its own relay on 127.0.0.1 and uses two data folders as the two machines)::

    python -m commander_os.integrations.examples.langgraph_two_machines [--workdir DIR]

The agent is a note taker: each turn adds a note to its thread state (checkpointed by
``CommanderSaver``) and to its long-term memory (``CommanderStore``). Both are ordinary synced
tables of agent ``note-taker``'s store on machine A, so they reach the relay. Machine B runs its
own agent, ``note-taker-b`` (two live stores never share an agent id), pulls the thread from the
relay with ``saver.pull_thread("note-taker", thread_id)``, takes one more turn with the same
``thread_id`` and finds A's memories through ``store.search_network``.

No model is called: the graph is deterministic, so the example runs anywhere.
"""

from __future__ import annotations

import argparse
import operator
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from commander_os.integrations import IntegrationStorage
from commander_os.integrations.langgraph import CommanderSaver, CommanderStore

__all__ = ["THREAD_ID", "Notes", "build_graph", "machine_a", "machine_b", "main", "open_machine"]

AGENT_A = "note-taker"
AGENT_B = "note-taker-b"
THREAD_ID = "conversation-1"
USER = "ada"
SYNC_TIMEOUT = 30.0


class Notes(TypedDict):
    """The thread's state: every note so far, and the turn that wrote the last one."""

    notes: Annotated[list[str], operator.add]
    turn: int


def _take_note(state: Notes, runtime: Runtime[None]) -> dict[str, Any]:
    turn = state.get("turn", 0) + 1
    note = state["notes"][-1]
    assert runtime.store is not None
    runtime.store.put(("memories", USER), f"turn-{turn}", {"text": note, "turn": turn})
    return {"turn": turn}


def build_graph(saver: CommanderSaver, store: CommanderStore) -> CompiledStateGraph[Any]:
    """The note taker: one node, checkpointed by ``saver``, remembering in ``store``."""
    builder = StateGraph(Notes)
    builder.add_node("take_note", _take_note)
    builder.add_edge(START, "take_note")
    builder.add_edge("take_note", END)
    return builder.compile(checkpointer=saver, store=store)


def open_machine(
    agent_id: str, data_dir: Path, relay_url: str
) -> tuple[IntegrationStorage, CommanderSaver, CommanderStore]:
    """One machine's agent store, with its checkpointer and its memory on it."""
    storage = IntegrationStorage(agent_id, data_dir, htpc_url=relay_url, enable_htpc=True)
    return storage, CommanderSaver(storage), CommanderStore(storage)


def _config() -> RunnableConfig:
    return {"configurable": {"thread_id": THREAD_ID}}


def machine_a(data_dir: Path, relay_url: str, notes: Sequence[str]) -> list[str]:
    """Take one turn per note on machine A, wait until the relay has it all; return the notes."""
    storage, saver, store = open_machine(AGENT_A, data_dir, relay_url)
    try:
        graph = build_graph(saver, store)
        state: dict[str, Any] = {}
        for note in notes:
            state = graph.invoke({"notes": [note]}, _config())
        if not storage.wait_for_sync(SYNC_TIMEOUT):
            raise RuntimeError(f"the relay did not take machine A's writes in {SYNC_TIMEOUT} s")
        return list(state["notes"])
    finally:
        storage.close()


def machine_b(data_dir: Path, relay_url: str, note: str) -> dict[str, Any]:
    """Resume the thread on machine B: pull it from the relay, take one more turn.

    Returns the thread's notes after the turn, the checkpoints pulled and the memories of
    machine A found on the relay.
    """
    storage, saver, store = open_machine(AGENT_B, data_dir, relay_url)
    try:
        pulled = saver.pull_thread(AGENT_A, THREAD_ID)
        state = build_graph(saver, store).invoke({"notes": [note]}, _config())
        remote = store.search_network(("memories", USER), agent_id=AGENT_A, limit=100)
        storage.wait_for_sync(SYNC_TIMEOUT)
        return {
            "pulled": pulled,
            "notes": list(state["notes"]),
            "turn": state["turn"],
            "memories_of_a": sorted(item.value["text"] for item in remote),
        }
    finally:
        storage.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Start a relay, run machine A, then machine B, and print what each saw."""
    from commander_os.relay import RelayProcess

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where the two machines keep their data")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="commander-langgraph-"))
    with RelayProcess(data_dir=workdir / "relay") as relay:
        print(f"relay on {relay.url}; data under {workdir}")
        notes = machine_a(workdir / "machine-a", relay.url, ["buy milk", "call Grace"])
        print(f"machine A ({AGENT_A}): thread {THREAD_ID!r} has {notes}")
        result = machine_b(workdir / "machine-b", relay.url, "book the train")
        print(f"machine B ({AGENT_B}): pulled {result['pulled']} checkpoints from the relay")
        print(f"machine B: thread {THREAD_ID!r} now has {result['notes']} (turn {result['turn']})")
        print(f"machine B: A's memories on the relay: {result['memories_of_a']}")
    return 0 if result["notes"] == [*notes, "book the train"] else 1


if __name__ == "__main__":
    sys.exit(main())
