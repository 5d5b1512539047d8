"""Move a central store between backends (SQLite ⇄ PostgreSQL) without loss.

The export is JSON lines, one stored record per line, in ``rev`` order, tombstones included::

    {"agent_id": "my-agent", "table": "kv", "key": "config", "version": 7587593912188928001,
     "ts": "2026-11-27T02:33:27.123456Z", "deleted": false, "data": {"value": 1}}

The import applies the lines through the ordinary monotonic apply, so it keeps every version,
``ts`` and deletion, never lets an older record overwrite a newer one already there, and
importing the same file again changes nothing. Both sides only use the
:class:`~commander_os.relay.central._base.CentralStore` contract, so any pair of backends works.

Example::

    async with SQLiteCentralStore.in_directory("data/relay") as source:
        with open("central.jsonl", "wb") as out:
            await export_records(source, out)
    async with PostgresCentralStore(url) as target:
        with open("central.jsonl", "rb") as lines:
            print(await import_records(target, lines))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

import orjson
from pydantic import ValidationError

from commander_os.protocol import (
    ChangeRecord,
    QueryRequest,
    StoredRecord,
    format_ts,
    stored_record_json,
)
from commander_os.relay.central._base import CentralStore

__all__ = [
    "EXPORT_PAGE",
    "IMPORT_BATCH",
    "ImportResult",
    "export_records",
    "import_records",
    "is_exportable",
    "parse_line",
    "record_line",
]

EXPORT_PAGE = 1000
IMPORT_BATCH = 2000


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did: lines read, records that changed the store, records already there."""

    records: int
    applied: int
    ignored: int


def record_line(record: StoredRecord) -> bytes:
    """One stored record as a JSON line (newline included): the wire form without ``rev``,
    which belongs to the store it came from."""
    body = stored_record_json(record)
    del body["rev"]
    body.pop("damaged", None)  # reported by export_records; an import takes the record as it is
    body["ts"] = format_ts(record.ts)
    return orjson.dumps(body) + b"\n"


def is_exportable(record: StoredRecord) -> bool:
    """False for a damaged record whose data could not be read: its line could not be
    imported (a ``ts`` that had to be clamped still can)."""
    return record.deleted or record.data is not None


async def export_records(
    store: CentralStore,
    out: IO[bytes],
    *,
    on_damaged: Callable[[StoredRecord], object] | None = None,
    on_progress: Callable[[int], object] | None = None,
) -> int:
    """Write every record of ``store`` (tombstones too) to ``out`` in rev order; return count.

    ``on_progress(count)`` is called after each page written.

    A damaged record (see :class:`~commander_os.protocol.StoredRecord`) never stops the
    export: it is passed to ``on_damaged``, then written if :func:`is_exportable` (with its
    clamped ``ts``), else left out of the file and the count.
    """
    count = 0
    cursor: str | None = None
    while True:
        page = await store.query(
            QueryRequest(include_deleted=True, limit=EXPORT_PAGE, cursor=cursor)
        )
        records = _exportable(page.records, on_damaged)
        out.writelines(record_line(record) for record in records)
        count += len(records)
        if on_progress is not None:
            on_progress(count)
        if page.next_cursor is None:
            return count
        cursor = page.next_cursor


def _exportable(
    records: list[StoredRecord], on_damaged: Callable[[StoredRecord], object] | None
) -> list[StoredRecord]:
    """``records`` without those :func:`is_exportable` refuses; every damaged one reported."""
    damaged = [record for record in records if record.damaged]
    if not damaged:
        return records
    report = on_damaged or (lambda _: None)
    for record in damaged:
        report(record)
    return [record for record in records if is_exportable(record)]


def parse_line(line: bytes | str, number: int) -> ChangeRecord:
    """A change record from one export line; ``ValueError`` naming the line if it is not one."""
    try:
        body = orjson.loads(line)
        if not isinstance(body, dict):
            raise TypeError("expected a JSON object")
        deleted = body.pop("deleted", False)
        if deleted:
            body.pop("data", None)
        return ChangeRecord.model_validate({**body, "op": "delete" if deleted else "upsert"})
    except (orjson.JSONDecodeError, TypeError, ValidationError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ValueError(f"line {number}: not an exported central-store record: {detail}") from None


async def import_records(
    store: CentralStore,
    lines: Iterable[bytes | str],
    *,
    on_progress: Callable[[int], object] | None = None,
) -> ImportResult:
    """Apply exported ``lines`` to ``store`` (monotonic: a re-import changes nothing).

    ``on_progress(lines_applied)`` is called after each batch.

    Raises ``ValueError`` naming the first bad line; batches before it are already applied
    (harmless: importing the corrected file again skips them).
    """
    batch: list[ChangeRecord] = []
    totals = [0, 0, 0]

    async def flush() -> None:
        for ack in await store.apply(batch):
            totals[1] += ack.applied
            totals[2] += ack.ignored
        totals[0] += len(batch)
        batch.clear()
        if on_progress is not None:
            on_progress(totals[0])

    for number, line in enumerate(lines, 1):
        if line.strip():
            batch.append(parse_line(line, number))
        if len(batch) >= IMPORT_BATCH:
            await flush()
    if batch:
        await flush()
    return ImportResult(*totals)
