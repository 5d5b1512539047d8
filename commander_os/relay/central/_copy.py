"""Copy another relay's records into a central store: ``commander-os relay sync --from URL``.

The source is read over HTTP, as any client reads it: ``/relay/query`` with deletions
included, page by page in its change order. Each page is checked against the protocol's
models (an answer that does not parse is an error, never a silent gap) and applied through the
store's ordinary monotonic apply, so the highest version of each row wins and running the copy
again changes nothing.

It resumes: after each page the source's cursor is written to a state file, so an interrupted
copy continues where it stopped, and a later run copies only what changed since (rows the
source updated meanwhile come again, in their new place in its order).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from pydantic import ValidationError

from commander_os.protocol import ChangeRecord, QueryResponse, StoredRecord, encode_cursor
from commander_os.relay.central._base import CentralStore
from commander_os.relay.central._transfer import is_exportable

__all__ = ["CopyError", "CopyProgress", "copy_from_relay", "state_file"]

#: Records asked for per page (the relays' own upper bound).
PAGE = 1000


class CopyError(Exception):
    """The source relay could not be read, or answered something that is not a query page."""


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """How far a copy got: records read, applied (new or newer here), already here, and
    damaged at the source beyond use (left out), and the seconds it has run."""

    records: int = 0
    applied: int = 0
    ignored: int = 0
    damaged: int = 0
    seconds: float = 0.0


def state_file(folder: Path, source: str) -> Path:
    """Where the cursor of a copy from ``source`` is kept, in ``folder``."""
    digest = hashlib.sha256(source.rstrip("/").encode()).hexdigest()[:16]
    return folder / f"relay-sync-{digest}.cursor"


def _change(record: StoredRecord) -> ChangeRecord:
    return ChangeRecord(
        agent_id=record.agent_id,
        table=record.table,
        key=record.key,
        op="delete" if record.deleted else "upsert",
        data=None if record.deleted else record.data,
        version=record.version,
        ts=record.ts,
    )


def _read_cursor(path: Path | None) -> str | None:
    if path is None or not path.exists():
        return None
    text = path.read_text(encoding="utf-8").strip()
    return text or None


def _write_cursor(path: Path | None, cursor: str) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(cursor + "\n", encoding="utf-8")
    os.replace(temporary, path)  # a crash leaves the old cursor or the new one, never half


async def _page(client: httpx.AsyncClient, cursor: str | None) -> QueryResponse:
    body = {"include_deleted": True, "limit": PAGE, **({"cursor": cursor} if cursor else {})}
    try:
        response = await client.post("/relay/query", json=body)
    except httpx.HTTPError as exc:
        raise CopyError(f"{client.base_url} unreachable: {exc}") from None
    if response.status_code != 200:
        raise CopyError(f"{client.base_url} answered {response.status_code}: {response.text[:300]}")
    try:
        return QueryResponse.model_validate_json(response.content)
    except ValidationError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CopyError(
            f"{client.base_url} answered something that is not a page: {detail}"
        ) from None


async def copy_from_relay(
    store: CentralStore,
    source: str,
    *,
    token: str | None = None,
    state: Path | None = None,
    timeout: float = 60.0,
    verify: bool | str = True,
    on_progress: Callable[[CopyProgress], object] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CopyProgress:
    """Copy every record of the relay at ``source`` (deletions included) into ``store``.

    ``state`` keeps the cursor between runs (see the module docstring). Raises
    :class:`CopyError` when the source cannot be read; what was applied before stays (a
    rerun continues from the last page applied).
    """
    headers = {"authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    progress = CopyProgress()
    cursor = _read_cursor(state)
    async with httpx.AsyncClient(
        base_url=source.rstrip("/"),
        headers=headers,
        timeout=timeout,
        verify=verify,
        transport=transport,
    ) as client:
        while True:
            page = await _page(client, cursor)
            usable = [record for record in page.records if is_exportable(record)]
            acks = await store.apply([_change(record) for record in usable]) if usable else []
            progress = replace(
                progress,
                records=progress.records + len(page.records),
                applied=progress.applied + sum(ack.applied for ack in acks),
                ignored=progress.ignored + sum(ack.ignored for ack in acks),
                damaged=progress.damaged + len(page.records) - len(usable),
                seconds=time.monotonic() - started,
            )
            if page.records:
                cursor = page.next_cursor or encode_cursor(page.records[-1].rev)
                _write_cursor(state, cursor)
            if on_progress is not None:
                on_progress(progress)
            if page.next_cursor is None:
                return progress
