"""Schema of the PostgreSQL central store: named, ordered migrations recorded in a table.

The store migrates its own schema when it opens (``commander-os relay migrate`` does the same on
demand). Every migration runs in one transaction together with its ``schema_version`` row, under
a transaction-level advisory lock, so several relays starting at once on one database migrate it
exactly once. A database whose schema is newer than this code is refused.

Layout (migration 1):

* ``records``: the newest state of each ``(agent_id, tbl, key)``; ``data`` is JSONB with a GIN
  (``jsonb_path_ops``) index serving ``@>`` containment for the ``eq``/``in``/``contains`` field
  filters; ``rev`` is the global change order (unique, for the change feed and cursors).
* ``agents``: per-agent high-water mark and last contact.

Migration 3 replaces the one-row ``rev_counter`` (which every commit on every relay locked until
it committed) with the sequence ``records_rev_seq`` and a commit-order watermark
(``_postgres_watermark.py``). Every table's primary key starts with ``agent_id`` and no unique
index lacks it, so the tables can be distributed by ``agent_id`` (README, "Sharding").

Text columns use the "C" collation: keys compare by code point, as in the SQLite store, and
``key >= prefix AND key < upper`` prefix ranges are exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from commander_os.relay.central._base import CentralStoreError

__all__ = [
    "MIGRATIONS",
    "REV_BLOCK",
    "SCHEMA_VERSION",
    "Migration",
    "SchemaTooNewError",
    "check_schema_name",
    "migrate",
]

SCHEMA_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
#: Any constant works; it only has to be the same for every relay (and differ from the app's).
MIGRATION_LOCK_KEY = 0x636F6D6D616E64  # "command"

CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
LOCK_MIGRATIONS = "SELECT pg_advisory_xact_lock(%s)"
SELECT_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
INSERT_VERSION = "INSERT INTO schema_version (version, description) VALUES (%s, %s)"

V1_RECORDS = """
CREATE TABLE records (
    agent_id text COLLATE "C" NOT NULL,
    tbl      text COLLATE "C" NOT NULL,
    key      text COLLATE "C" NOT NULL,
    version  bigint  NOT NULL,
    ts       bigint  NOT NULL,
    deleted  boolean NOT NULL,
    data     jsonb,
    rev      bigint  NOT NULL,
    -- (agent_id, key, tbl): a lookup by agent and key without a table is an index prefix too.
    PRIMARY KEY (agent_id, key, tbl)
);
CREATE UNIQUE INDEX records_rev ON records (rev);
CREATE INDEX records_agent_table_rev ON records (agent_id, tbl, rev);
CREATE INDEX records_data ON records USING gin (data jsonb_path_ops);
CREATE TABLE rev_counter (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_rev bigint  NOT NULL
);
INSERT INTO rev_counter (id, last_rev) VALUES (true, 0);
CREATE TABLE agents (
    agent_id        text COLLATE "C" PRIMARY KEY,
    highest_version bigint NOT NULL,
    last_seen       bigint NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: applied once, in order, in one transaction with its version row."""

    version: int
    description: str
    statements: str


V2_IDENTITY = """
ALTER TABLE records ADD COLUMN received bigint;
UPDATE records SET received = ts;
ALTER TABLE records ALTER COLUMN received SET NOT NULL;
ALTER TABLE agents ADD COLUMN incarnation bigint NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN seq_hi bigint NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN recent text NOT NULL DEFAULT '[]';
"""

#: Revisions one ``nextval`` reserves: a commit draws one block per this many rows, so the
#: sequence is touched about once per commit, not once per record. Unused revs are gaps, which
#: the contract allows (revs are increasing, not dense).
REV_BLOCK = 1000

#: Revisions from a sequence instead of the one-row counter every commit queued on (see
#: ``_postgres_watermark.py``). NO CYCLE, CACHE 1: a value cached by one session and used later
#: would fall below the sequence's last value after a reader had taken that as settled.
#: ``records_rev`` stops being unique: a unique index must hold the distribution column on a
#: sharded (Citus-style) cluster, and the sequence alone keeps revs unique.
V3_REV_SEQUENCE = """
CREATE SEQUENCE records_rev_seq AS bigint INCREMENT BY 1000 MINVALUE 1 NO CYCLE CACHE 1;
SELECT setval('records_rev_seq', last_rev + 1, false) FROM rev_counter;
DROP TABLE rev_counter;
DROP INDEX records_rev;
CREATE INDEX records_rev ON records (rev);
"""

#: State apart from order: ``records`` keeps each identity's current state with no index on a
#: column an update changes (its updates can be HOT: no new index entries, pruned in-page
#: without a vacuum), ``changes`` is the append-only log that orders them (one row per applied
#: change; a row whose record moved on is superseded and left to the retention sweep).
#: ``records_in_order`` joins the two: every read of the rev order goes through it.
#: Field indexes are opt-in (``field_indexes``, ``commander-os relay index``), not one GIN index
#: every write pays for.
V4_STATE_AND_LOG = """
CREATE TABLE changes (
    agent_id text COLLATE "C" NOT NULL,
    key      text COLLATE "C" NOT NULL,
    tbl      text COLLATE "C" NOT NULL,
    rev      bigint NOT NULL,
    PRIMARY KEY (agent_id, key, tbl, rev)
);
INSERT INTO changes (agent_id, key, tbl, rev) SELECT agent_id, key, tbl, rev FROM records;
CREATE INDEX changes_rev ON changes (rev);
CREATE INDEX changes_agent_table_rev ON changes (agent_id, tbl, rev);
DROP INDEX records_rev;
DROP INDEX records_agent_table_rev;
DROP INDEX records_data;
ALTER TABLE records SET (fillfactor = 80);
ALTER TABLE agents SET (fillfactor = 50);
CREATE VIEW records_in_order AS
SELECT r.agent_id, r.tbl, r.key, r.version, r.ts, r.deleted, r.data, c.rev, r.received
FROM changes c JOIN records r
  ON r.agent_id = c.agent_id AND r.key = c.key AND r.tbl = c.tbl AND r.rev = c.rev;
CREATE TABLE field_indexes (
    field text COLLATE "C" PRIMARY KEY,
    name  text NOT NULL UNIQUE
);
CREATE TABLE retention (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    horizon_rev bigint  NOT NULL DEFAULT 0,
    marks       text    NOT NULL DEFAULT '[]'
);
INSERT INTO retention DEFAULT VALUES;
"""

#: Live records per agent and table, kept by every commit (``/relay/agents`` reads it instead
#: of counting the records table).
V5_TABLE_STATS = """
CREATE TABLE table_stats (
    agent_id text COLLATE "C" NOT NULL,
    tbl      text COLLATE "C" NOT NULL,
    live     bigint NOT NULL,
    PRIMARY KEY (agent_id, tbl)
) WITH (fillfactor = 50);
INSERT INTO table_stats (agent_id, tbl, live)
SELECT agent_id, tbl, count(*) FILTER (WHERE NOT deleted) FROM records GROUP BY agent_id, tbl;
"""

#: Reads of the rev order walk the log and look each entry's record up by key, whatever the
#: table's size (``OFFSET 0`` keeps the planner from turning the lookup into a hash join of
#: both tables, which it prefers while they are small and which would not follow matches).
#: ``records_by_state`` is the plain join, for reads a field index drives from ``records``.
V6_LOG_DRIVEN_READS = """
CREATE OR REPLACE VIEW records_in_order AS
SELECT c.agent_id, c.tbl, c.key, r.version, r.ts, r.deleted, r.data, c.rev, r.received
FROM changes c CROSS JOIN LATERAL (
    SELECT r.version, r.ts, r.deleted, r.data, r.received FROM records r
    WHERE r.agent_id = c.agent_id AND r.key = c.key AND r.tbl = c.tbl AND r.rev = c.rev
    OFFSET 0
) r;
CREATE VIEW records_by_state AS
SELECT r.agent_id, r.tbl, r.key, r.version, r.ts, r.deleted, r.data, c.rev, r.received
FROM records r JOIN changes c
  ON c.agent_id = r.agent_id AND c.key = r.key AND c.tbl = r.tbl AND c.rev = r.rev;
"""

#: One agent's changes in rev order whatever their table: a filter on an agent without a table
#: walks only that agent's log (it walked the whole log's rev order, skipping other agents:
#: 12 -> 278 ms for a 1% match at 1M records).
V7_AGENT_LOG = """
CREATE INDEX changes_agent_rev ON changes (agent_id, rev);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "records, rev counter, agents", V1_RECORDS),
    Migration(2, "relay receive times; each agent's delivery identity", V2_IDENTITY),
    Migration(3, "revisions from a sequence read up to a commit-order watermark", V3_REV_SEQUENCE),
    Migration(4, "records apart from the change log; opt-in field indexes", V4_STATE_AND_LOG),
    Migration(5, "live records per agent and table, kept by every commit", V5_TABLE_STATS),
    Migration(6, "reads of the rev order walk the log", V6_LOG_DRIVEN_READS),
    Migration(7, "each agent's changes in rev order", V7_AGENT_LOG),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


class SchemaTooNewError(CentralStoreError):
    """The database was migrated by newer code than this relay; upgrade the relay."""


def check_schema_name(name: str) -> str:
    """Return ``name`` if it is a plain lowercase identifier; raise ``ValueError`` otherwise."""
    if not re.fullmatch(SCHEMA_NAME_PATTERN, name):
        raise ValueError(
            f"invalid PostgreSQL schema name {name!r}: use lowercase letters, digits and _"
        )
    return name


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str | None) -> int:
    """Bring the schema (``schema``, or the connection's current one) up to date.

    Returns the schema version now in place. Raises :class:`SchemaTooNewError` when the database
    is ahead of this code. ``conn`` must be in autocommit mode; it is left idle.
    """
    async with conn.transaction():
        await conn.execute(LOCK_MIGRATIONS, (MIGRATION_LOCK_KEY,))
        if schema is not None:
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
        await conn.execute(CREATE_VERSION_TABLE)
        cursor = await conn.execute(SELECT_VERSION)
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"central store schema is version {current}, newer than this relay's "
                f"{SCHEMA_VERSION}: upgrade commander-os-storage on this relay"
            )
        for step in MIGRATIONS:
            if step.version > current:
                await conn.execute(step.statements)
                await conn.execute(INSERT_VERSION, (step.version, step.description))
                current = step.version
    return current
