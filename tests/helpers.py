"""Helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from django.db import connection

from pubsubpull.models import Change


def all_changes() -> list[Change]:
    """The change log in id order (no horizon: capture tests read their own transaction)."""
    return list(Change.objects.order_by("id"))


def raw_change_text() -> str:
    """Every stored change as text, to search for values that must never be stored."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(string_agg(c::text, E'\\n'), '') FROM pubsubpull_change c")
        return str(cursor.fetchone()[0])


def current_database_url() -> str:
    """A DATABASE_URL for the test database, for subprocesses (scripts, workers, servers)."""
    from urllib.parse import quote

    s = connection.settings_dict
    auth = quote(s["USER"] or "postgres") + (":" + quote(s["PASSWORD"]) if s["PASSWORD"] else "")
    host = s["HOST"] or ""
    if host.startswith("/"):  # a socket folder
        return f"postgresql://{auth}@/{s['NAME']}?host={quote(host)}"
    port = f":{s['PORT']}" if s["PORT"] else ""
    return f"postgresql://{auth}@{host}{port}/{s['NAME']}"


def subprocess_env() -> dict[str, str]:
    """The environment for a subprocess of the test project on the test database."""
    import os

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "test_project.settings",
        "DATABASE_URL": current_database_url(),
    }


def raw_connection() -> psycopg.Connection[Any]:
    """A psycopg connection of its own to the test database (another session)."""
    return psycopg.connect(current_database_url())


def backend_alive(pid: int) -> bool:
    """Whether the server still runs the backend ``pid`` (it ends a little after its
    client closed the connection, and only then frees its locks)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone() is not None


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
