"""PostgreSQL test helpers (tests/network is on sys.path).

The PostgreSQL tests run when ``COMMANDER_OS_TEST_DATABASE_URL`` names a server (``make test``
sets it when PostgreSQL is up, starting the local one if needed) and are skipped, with that
reason, when it is unset. When it is set and the server cannot be reached they fail: CI must not
pass by silently skipping them.

Each test gets a fresh schema (``scratch_schema``), dropped afterwards, so tests never see each
other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest

DATABASE_URL_ENV = "COMMANDER_OS_TEST_DATABASE_URL"
SKIP_REASON = (
    f"PostgreSQL tests need {DATABASE_URL_ENV} (e.g. postgresql://postgres@127.0.0.1/test)"
)


def database_url() -> str:
    """The test server's URL; skips the calling test when none is configured."""
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        pytest.skip(SKIP_REASON)
    return url


def with_search_path(url: str, schema: str) -> str:
    """``url`` with a libpq ``options`` parameter that makes ``schema`` the search path."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def scratch_schema(url: str, *, create: bool = False) -> Iterator[str]:
    """A fresh schema name (created first when ``create``), dropped with its tables at exit."""
    name = "test_" + uuid.uuid4().hex[:12]
    if create:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        except psycopg.OperationalError:
            pass  # the server went away: the test already failed for that reason
