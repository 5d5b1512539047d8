"""The recruiter store's schema, as ordered migrations (see ``schema_version`` in the seed).

Version 1 creates every table and index; version 2 adds ``candidates.linkedin_url`` exactly as
the seed's migration example does. Never edit a migration that has shipped: add the next one.

Design notes, for anyone modelling their own agent's data this way:

* **Ids are text** (``cand-3f2a9c41d0b7``): rows travel to the relay under
  ``(agent_id, table, key)``, so ids only need to be unique within one agent's store, and text
  ids can also be chosen by the caller (an ATS id, say).
* **Skills live twice**: as a JSON array on the row (``candidates.skills``), which is what the
  relay copy exposes to other agents (``contains`` filters), and as one row per skill in
  ``candidate_skills`` / ``requisition_skills``, which is what makes "python AND sql" and
  requisition matching indexed joins instead of scans. The store writes both in one
  transaction.
* **Applications** link candidates to requisitions; scheduling an interview creates the link.
  A candidate's ``status`` is their place in the pipeline, and ``pipeline_stats`` counts the
  statuses of the candidates linked to a requisition.
* **Times** are fixed-width UTC text, so ``starts_at < ?`` compares correctly as strings.
* **Partial indexes** on ``status = 'scheduled'`` keep the double-booking check and the
  upcoming-interviews query on the few live slots, however long the history grows.
* Deleting a candidate or a requisition cascades to its skills, applications and interviews
  (SQLite's foreign-key actions fire the sync triggers, so the relay sees those deletes too).
"""

from __future__ import annotations

from commander_os.storage import Migration, SyncedTable

__all__ = ["MIGRATIONS", "SYNCED_TABLES"]

V1_SCHEMA = """
CREATE TABLE candidates (
    id               TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL CHECK (name <> ''),
    email            TEXT NOT NULL UNIQUE,
    phone            TEXT,
    location         TEXT COLLATE NOCASE,
    skills           TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(skills)),
    years_experience REAL NOT NULL DEFAULT 0 CHECK (years_experience >= 0),
    status           TEXT NOT NULL DEFAULT 'new' CHECK (status IN
                         ('new', 'screening', 'interviewing', 'offered', 'hired', 'rejected')),
    notes            TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX idx_candidates_status ON candidates (status);
CREATE INDEX idx_candidates_location ON candidates (location);

CREATE TABLE candidate_skills (
    candidate_id TEXT NOT NULL REFERENCES candidates (id) ON DELETE CASCADE,
    skill        TEXT NOT NULL,
    PRIMARY KEY (candidate_id, skill)
) WITHOUT ROWID;
-- "who has skill X": the skills search and the matching join start here.
CREATE INDEX idx_candidate_skills_skill ON candidate_skills (skill, candidate_id);

CREATE TABLE requisitions (
    id                  TEXT PRIMARY KEY NOT NULL,
    title               TEXT NOT NULL CHECK (title <> ''),
    department          TEXT COLLATE NOCASE,
    required_skills     TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(required_skills)),
    nice_to_have_skills TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(nice_to_have_skills)),
    openings            INTEGER NOT NULL DEFAULT 1 CHECK (openings >= 0),
    status              TEXT NOT NULL DEFAULT 'open' CHECK (status IN
                            ('open', 'on_hold', 'filled', 'closed')),
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE INDEX idx_requisitions_status ON requisitions (status, department);

CREATE TABLE requisition_skills (
    requisition_id TEXT NOT NULL REFERENCES requisitions (id) ON DELETE CASCADE,
    skill          TEXT NOT NULL,
    required       INTEGER NOT NULL CHECK (required IN (0, 1)),
    PRIMARY KEY (requisition_id, skill)
) WITHOUT ROWID;

CREATE TABLE applications (
    candidate_id   TEXT NOT NULL REFERENCES candidates (id) ON DELETE CASCADE,
    requisition_id TEXT NOT NULL REFERENCES requisitions (id) ON DELETE CASCADE,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (candidate_id, requisition_id)
) WITHOUT ROWID;
CREATE INDEX idx_applications_requisition ON applications (requisition_id, candidate_id);

CREATE TABLE interviews (
    id             TEXT PRIMARY KEY NOT NULL,
    candidate_id   TEXT NOT NULL REFERENCES candidates (id) ON DELETE CASCADE,
    requisition_id TEXT NOT NULL REFERENCES requisitions (id) ON DELETE CASCADE,
    starts_at      TEXT NOT NULL,
    ends_at        TEXT NOT NULL,
    interviewer    TEXT NOT NULL COLLATE NOCASE CHECK (interviewer <> ''),
    stage          TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'scheduled' CHECK (status IN
                       ('scheduled', 'completed', 'cancelled')),
    feedback       TEXT,
    score          INTEGER CHECK (score BETWEEN 1 AND 5),
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    CHECK (ends_at > starts_at)
);
-- Double-booking check and an interviewer's agenda: live slots only.
CREATE INDEX idx_interviews_interviewer_slot ON interviews (interviewer, starts_at)
    WHERE status = 'scheduled';
-- Upcoming interviews of everyone.
CREATE INDEX idx_interviews_upcoming ON interviews (starts_at) WHERE status = 'scheduled';
-- A candidate's interviews (and their double-booking check); also serves the cascade.
CREATE INDEX idx_interviews_candidate ON interviews (candidate_id, starts_at);
CREATE INDEX idx_interviews_requisition ON interviews (requisition_id, starts_at);
"""

# The seed's example, as a migration: the runner records the schema_version row in the same
# transaction, so there is no INSERT INTO schema_version and no commit() here.
V2_LINKEDIN_URL = "ALTER TABLE candidates ADD COLUMN linkedin_url TEXT"

MIGRATIONS = (
    Migration(1, "Recruiter schema: candidates, requisitions, interviews, skills", V1_SCHEMA),
    Migration(2, "Added LinkedIn URL field", V2_LINKEDIN_URL),
)

#: Every table is shipped to the relay; JSON columns travel as embedded JSON so that other
#: agents can filter on them (``("skills", "contains", "python")``).
SYNCED_TABLES = (
    SyncedTable("candidates", json_columns=("skills",)),
    SyncedTable("candidate_skills"),
    SyncedTable("requisitions", json_columns=("required_skills", "nice_to_have_skills")),
    SyncedTable("requisition_skills"),
    SyncedTable("applications"),
    SyncedTable("interviews"),
)
