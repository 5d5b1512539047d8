"""Data analytics: what each agent sends, how far behind it is, and what its heartbeats say.

Kept in memory by one relay, updated where records are applied (``_ingest.apply_writes``) and
where heartbeats arrive. The ingest hook does a few C-level passes over the records of a write
(counts per table, bytes, the oldest ``ts``) and touches one bucket per series: nothing per
record in Python when a write holds one table.

An agent's **health** compares what is known of it with ``relay.alerts``: ``behind`` when its
queue or lag is past the limits (or it has changes queued and never delivered one), ``silent``
when nothing was heard from it for ``max_silence_seconds``, ``warning`` with dead letters or
a last error, else ``ok``.
"""

from __future__ import annotations

import operator
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from commander_os.config import AlertsConfig
from commander_os.protocol import Ack, AgentSummary, EncodedRecord, Heartbeat, split_version
from commander_os.relay._analytics._series import SeriesSet

__all__ = ["AgentActivity", "DataAnalytics", "Health", "describe_age"]

#: Agents followed one by one (least recently heard are forgotten first): bounds memory.
MAX_TRACKED_AGENTS = 5000
#: Agents whose lag and queue the dashboard charts (the furthest behind first).
CHARTED_AGENTS = 8

_TABLE = operator.itemgetter(1)
_TS = operator.itemgetter(4)
_DATA = operator.itemgetter(6)


class Health:
    """Health levels, worst last: what the dashboard colours and ``/metrics`` counts."""

    OK = "ok"
    WARNING = "warning"
    SILENT = "silent"
    BEHIND = "behind"
    ALL = (OK, WARNING, SILENT, BEHIND)


@dataclass
class AgentActivity:
    """One agent as this relay has seen it since it started."""

    agent_id: str
    records: int = 0
    bytes: int = 0
    applied: int = 0
    ignored: int = 0
    tables: dict[str, list[int]] = field(default_factory=dict)  # table -> [records, bytes]
    last_write_at: float | None = None
    lag_seconds: float | None = None
    heartbeat: Heartbeat | None = None
    heartbeat_at: float | None = None
    series: SeriesSet = field(default_factory=lambda: SeriesSet(("writes", "lag", "queue")))


class DataAnalytics:
    """Per-agent activity, heartbeats and the relay-wide ingest series."""

    def __init__(self, alerts: AlertsConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.alerts = alerts
        self.agents: OrderedDict[str, AgentActivity] = OrderedDict()
        self.totals = SeriesSet(("records", "bytes", "queries", "query_seconds", "query_max"))
        self._clock = clock

    def _agent(self, agent_id: str) -> AgentActivity:
        activity = self.agents.get(agent_id)
        if activity is None:
            activity = self.agents[agent_id] = AgentActivity(agent_id)
            if len(self.agents) > MAX_TRACKED_AGENTS:
                self.agents.popitem(last=False)
        else:
            self.agents.move_to_end(agent_id)
        return activity

    # -- updates ------------------------------------------------------------------------------

    def on_write(self, records: Sequence[EncodedRecord], acks: Sequence[Ack]) -> None:
        """Count an applied write (the records of one request, all of one agent)."""
        if not records:
            return
        if len(acks) > 1:  # never from a write endpoint; kept correct all the same
            for ack in acks:
                mine = [r for r in records if r.agent_id == ack.agent_id]
                self.on_write(mine, [ack])
            return
        now = self._clock()
        (ack,) = acks
        activity = self._agent(ack.agent_id)
        if len(records) == 1:  # /relay/immediate: no pass over a list
            (record,) = records
            nbytes = len(record.data) if record.data is not None else 0
            _add_table(activity, record.table, 1, nbytes)
            oldest = record.ts_us
        else:
            nbytes = self._count_tables(activity, records)
            oldest = min(map(_TS, records))
        lag = max(0.0, now - oldest / 1e6)
        count = len(records)
        activity.records += count
        activity.bytes += nbytes
        activity.applied += ack.applied
        activity.ignored += ack.ignored
        activity.last_write_at = now
        activity.lag_seconds = lag
        series = activity.series
        slot = series.slot(now)
        series.values("writes")[slot] += count
        lags = series.values("lag")
        if lag > lags[slot]:
            lags[slot] = lag
        totals = self.totals
        slot = totals.slot(now)
        totals.values("records")[slot] += count
        totals.values("bytes")[slot] += nbytes

    @staticmethod
    def _count_tables(activity: AgentActivity, records: Sequence[EncodedRecord]) -> int:
        """Add the write's records and bytes to each table's totals; the write's bytes."""
        nbytes = sum(map(len, filter(None, map(_DATA, records))))
        tables = Counter(map(_TABLE, records))
        if len(tables) == 1:
            ((table, count),) = tables.items()
            _add_table(activity, table, count, nbytes)
            return nbytes
        per_table = dict.fromkeys(tables, 0)
        for record in records:
            if record.data is not None:
                per_table[record.table] += len(record.data)
        for table, count in tables.items():
            _add_table(activity, table, count, per_table[table])
        return nbytes

    def on_heartbeat(self, heartbeat: Heartbeat) -> float:
        """Keep ``heartbeat`` as its agent's latest; the relay time it was received at."""
        now = self._clock()
        activity = self._agent(heartbeat.agent_id)
        activity.heartbeat = heartbeat
        activity.heartbeat_at = now
        activity.series.last("queue", now, heartbeat.queue_size)
        return now

    def on_query(self, seconds: float) -> None:
        """Count one answered query in the relay-wide series."""
        now = self._clock()
        self.totals.add("queries", now, 1)
        self.totals.add("query_seconds", now, seconds)
        self.totals.peak("query_max", now, seconds)

    # -- views --------------------------------------------------------------------------------

    def agents_view(self, summaries: Sequence[AgentSummary]) -> list[dict[str, Any]]:
        """Every agent the store or this relay knows (heartbeat-only ones too), worst first."""
        now = self._clock()
        stored = {summary.agent_id: summary for summary in summaries}
        names = sorted(stored.keys() | self.agents.keys())
        rows = [
            self._agent_row(name, stored.get(name), self.agents.get(name), now) for name in names
        ]
        order = {level: rank for rank, level in enumerate(reversed(Health.ALL))}
        rows.sort(key=lambda row: (order[row["health"]], row["agent_id"]))
        return rows

    def _agent_row(
        self,
        agent_id: str,
        summary: AgentSummary | None,
        activity: AgentActivity | None,
        now: float,
    ) -> dict[str, Any]:
        seen = activity or _UNSEEN
        last_seen = summary.last_seen.timestamp() if summary and summary.last_seen else None
        last_heard = _latest(last_seen, seen.last_write_at, seen.heartbeat_at)
        highest = summary.highest_version if summary else 0
        incarnation, seq = split_version(highest)
        row: dict[str, Any] = {
            "agent_id": agent_id,
            "records": summary.record_count if summary else 0,
            "tables": _tables(summary, seen),
            "highest_version": highest,
            "incarnation": incarnation,
            "seq": seq,
            "last_seen": last_seen,
            "last_heard": last_heard,
            "silent_seconds": None if last_heard is None else max(0.0, now - last_heard),
            "lag_seconds": seen.lag_seconds,
            "received_records": seen.records,
            "received_bytes": seen.bytes,
            "heartbeat": _heartbeat_json(seen.heartbeat, seen.heartbeat_at),
            "delivered": summary is not None,
        }
        row["health"], row["reasons"] = self.health(row)
        return row

    def health(self, row: dict[str, Any]) -> tuple[str, list[str]]:
        """The health level of an agent row and the reasons for it, worst first."""
        behind = self._behind(row)
        silence = self._silence(row)
        warnings = _warnings(row["heartbeat"] or {})
        if behind:
            return Health.BEHIND, behind + silence + warnings
        if silence:
            return Health.SILENT, silence + warnings
        return (Health.WARNING, warnings) if warnings else (Health.OK, [])

    def _behind(self, row: dict[str, Any]) -> list[str]:
        alerts = self.alerts
        queue = (row["heartbeat"] or {}).get("queue_size") or 0
        reasons = []
        if queue > alerts.max_queue:
            reasons.append(f"{queue:,} changes queued (limit {alerts.max_queue:,})")
        if not row["delivered"] and queue:
            reasons.append("has changes queued but never delivered a record")
        lag = row["lag_seconds"]
        if lag is not None and lag > alerts.max_lag_seconds:
            limit = describe_age(alerts.max_lag_seconds)
            reasons.append(f"lag {describe_age(lag)} (limit {limit})")
        return reasons

    def _silence(self, row: dict[str, Any]) -> list[str]:
        limit = self.alerts.max_silence_seconds
        silent = row["silent_seconds"]
        if silent is not None and silent <= limit:
            return []
        heard = "never heard from" if silent is None else f"silent for {describe_age(silent)}"
        return [f"{heard} (limit {describe_age(limit)})"]

    def charts(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The dashboard's series over the last hour: ingest rate, query latency, and lag and
        queue of the agents furthest behind."""
        now = self._clock()
        totals = self.totals
        width = totals.width
        queries = totals.points("queries", now)
        seconds = totals.points("query_seconds", now)
        charted = [r["agent_id"] for r in rows if r["agent_id"] in self.agents][:CHARTED_AGENTS]
        return {
            "bucket_seconds": width,
            "starts": totals.starts(now),
            "ingest_per_second": [(v or 0.0) / width for v in totals.points("records", now)],
            "queries_per_second": [(v or 0.0) / width for v in queries],
            "query_mean_ms": list(map(_mean_ms, queries, seconds)),
            "query_max_ms": [_ms(v) for v in totals.points("query_max", now)],
            "agents": {agent: self._agent_series(agent, now) for agent in charted},
        }

    def _agent_series(self, agent_id: str, now: float) -> dict[str, list[float | None]]:
        series = self.agents[agent_id].series
        return {
            "lag_seconds": series.points("lag", now),
            "queue": _carried(series.points("queue", now)),
        }


#: What is known of an agent this relay has not heard from since it started: nothing.
_UNSEEN = AgentActivity("")


def _warnings(beat: dict[str, Any]) -> list[str]:
    """What an agent's heartbeat reports that is wrong, short of being behind: with several
    delivery targets (replication), each lagging target by name."""
    reasons = []
    if beat.get("dead_letters"):
        reasons.append(f"{beat['dead_letters']:,} dead letters")
    targets = beat.get("targets") or []
    if len(targets) > 1:
        for target in targets:
            if target.get("last_error"):
                reasons.append(f"target {target['name']}: {target['last_error']}")
            elif target.get("queue_size"):
                age = target.get("oldest_pending_age")
                waited = "" if age is None else f", oldest {describe_age(age)}"
                reasons.append(f"target {target['name']}: {target['queue_size']:,} queued{waited}")
    elif beat.get("last_error"):
        reasons.append(f"last error: {beat['last_error']}")
    return reasons


def _mean_ms(count: float | None, seconds: float | None) -> float | None:
    return None if not count or seconds is None else 1000 * seconds / count


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def _carried(points: list[float | None]) -> list[float | None]:
    """A queue stays as its last heartbeat said until the next one: carry values forward."""
    out: list[float | None] = []
    held = None
    for value in points:
        held = value if value is not None else held
        out.append(held)
    return out


def _add_table(activity: AgentActivity, table: str, count: int, nbytes: int) -> None:
    kept = activity.tables.get(table)
    if kept is None:
        kept = activity.tables[table] = [0, 0]
    kept[0] += count
    kept[1] += nbytes


def _latest(*moments: float | None) -> float | None:
    known = [moment for moment in moments if moment is not None]
    return max(known) if known else None


def _tables(summary: AgentSummary | None, activity: AgentActivity) -> dict[str, Any]:
    stored = summary.tables if summary else {}
    received = activity.tables
    return {
        table: {
            "records": stored.get(table, 0),
            "received_records": received.get(table, [0, 0])[0],
            "received_bytes": received.get(table, [0, 0])[1],
        }
        for table in sorted(stored.keys() | received.keys())
    }


def _heartbeat_json(heartbeat: Heartbeat | None, at: float | None) -> dict[str, Any] | None:
    if heartbeat is None:
        return None
    body = heartbeat.model_dump(exclude={"agent_id"})
    body["received_at"] = at
    return body


def describe_age(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
