"""Reading the change log and tracked tables page by page, as JSON built by PostgreSQL."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.db import connections
from psycopg import sql as pgsql

from . import registry, topics, wakeups
from .positions import Position
from .sql import load, render


@dataclass(frozen=True)
class ChangesPage:
    results: list[str]  # change JSON texts, in position order
    first: Position | None  # position of the first result
    last: Position | None  # position of the last result
    horizon: int  # pg_snapshot_xmin when the page was read

    def cursor(self, after: Position, limit: int) -> Position:
        """Where the next read continues.

        A short page means the reader has caught up: every change it may see below
        the horizon was read, and every change still to come has ``txid >= horizon``,
        so the cursor can move up to ``(horizon, 0)`` past changes it was not shown.
        """
        last = self.last or after
        if len(self.results) < limit:
            return max(last, Position(self.horizon, 0))
        return last


def now(using: str = "default") -> Position:
    """The position of the present: changes after it are those not yet visible."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        return Position(int(cursor.fetchone()[0]), 0)


def readable(user: Any) -> list[registry.Tracked]:
    """Tracked models whose ``view`` permission the user has."""
    return [
        t
        for t in registry.tracked()
        if user.has_perm(f"{t.model._meta.app_label}.view_{t.model._meta.model_name}")
    ]


def scope(user: Any | None) -> tuple[list[str], bool]:
    """The model labels whose changes ``user`` may see, and whether custom events too
    (they need ``pubsubpull.view_change``). ``None`` is the service's own code: all."""
    if user is None:
        return [t.label for t in registry.tracked()], True
    return [t.label for t in readable(user)], user.has_perm("pubsubpull.view_change")


def changes_page(
    models: list[str],
    after: Position,
    patterns: list[str],
    limit: int,
    using: str = "default",
    *,
    events: bool = False,
    filter: str | None = None,
    until: Position | None = None,
) -> ChangesPage:
    """Changes after ``after`` (up to ``until``) below the horizon, of these model labels
    (and custom events if ``events``), topic patterns and jsonpath ``filter``."""
    params: dict[str, Any] = {
        "after_txid": str(after.txid),
        "after_id": after.id,
        "until_txid": str(until.txid) if until else None,
        "until_id": until.id if until else None,
        "models": models,
        "events": events,
        "patterns": [topics.to_regex(p) for p in patterns] or None,
        "filter": filter or None,
        "limit": limit,
    }
    with connections[using].cursor() as cursor:
        cursor.execute(load("changes_page"), params)
        rows = cursor.fetchall()
    results = [doc for _, position, doc in rows if position is not None]
    first = Position.parse(rows[0][1]) if results else None
    last = Position.parse(rows[-1][1]) if results else None
    return ChangesPage(results, first, last, int(rows[0][0]))


def wait_for_changes(
    models: list[str],
    after: Position,
    patterns: list[str],
    limit: int,
    wait: float,
    using: str = "default",
    *,
    events: bool = False,
) -> ChangesPage:
    """Like :func:`changes_page`, but wait up to ``wait`` seconds for a first change.

    Woken by this process's :mod:`~pubsubpull.wakeups` watcher (one LISTEN connection
    shared by every long poll), which also sees changes released by an older
    transaction that ended without writing.
    """
    page = changes_page(models, after, patterns, limit, using, events=events)
    if page.results or wait <= 0:
        return page
    deadline = time.monotonic() + wait
    with wakeups.watcher(using).waiting() as watcher:
        while True:
            seen = watcher.generation  # before reading: a move after it wakes us
            page = changes_page(models, after, patterns, limit, using, events=events)
            remaining = deadline - time.monotonic()
            if page.results or remaining <= 0:
                return page
            # at most a few seconds per wait: a safety net should the watcher be stuck
            watcher.wait(seen, min(remaining, 5.0))


def _relation(tracked: registry.Tracked) -> dict[str, str]:
    return {
        "relation": pgsql.Identifier(tracked.table).as_string(),
        "pk": pgsql.Identifier(tracked.pk_column).as_string(),
        "doc": tracked.document_sql("r"),
    }


def instances_page(
    tracked: registry.Tracked, after: Any, limit: int, using: str = "default"
) -> tuple[list[str], str | None]:
    """Up to ``limit`` rows after primary key ``after`` (None: from the start), as JSON
    texts, and the key to continue after (None when this was the last page)."""
    parts = _relation(tracked)
    condition = "true" if after is None else f"r.{parts['pk']} > %(after)s"
    query = render("instances_page", after=condition, **parts)
    with connections[using].cursor() as cursor:
        cursor.execute(query, {"after": after, "limit": limit + 1})
        rows = cursor.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [doc for _, doc in rows], (rows[-1][0] if more else None)


def instance(tracked: registry.Tracked, pk: Any, using: str = "default") -> str | None:
    """One row as JSON text, or None."""
    with connections[using].cursor() as cursor:
        cursor.execute(render("instance", **_relation(tracked)), {"pk": pk})
        row = cursor.fetchone()
    return None if row is None else str(row[0])
