"""Reading the change log and tracked tables page by page, as JSON built by PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg.errors
from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import sql as pgsql

from . import conf, registry, topics, wakeups
from .events import SUBSCRIPTION as SUBSCRIPTION_EVENTS
from .positions import Position
from .sql import load, render

# With a filter, one read builds and tests the JSON of at most this many changes (or
# its limit, if larger): a filter that selects little costs bounded work per read, and
# the reader's cursor moves on past what it examined.
SCAN_LIMIT = 5000


# errors of evaluating a jsonpath filter: a missing $variable, a regex or value error
_FILTER_ERRORS = (psycopg.errors.DataError, psycopg.errors.UndefinedObject)


class QueryFailed(ValueError):
    """A read failed because of what the reader asked for: its filter does not parse
    (``reason`` "syntax") or failed ("error"), or its filter and topics took longer than
    ``PUBSUBPULL["FILTER_TIMEOUT"]`` ("timeout")."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ChangesPage:
    results: list[str]  # change JSON texts, in position order
    first: Position | None  # position of the first result
    last: Position | None  # position of the last result
    horizon: int  # pg_snapshot_xmin when the page was read
    # a filtered read stopped at its scan limit: the last change it examined
    scanned_to: Position | None = None
    positions: list[Position] = field(default_factory=list)  # of each result
    topics: list[str] = field(default_factory=list)  # of each result

    def cursor(self, after: Position, limit: int) -> Position:
        """Where the next read continues.

        A short page means the reader has caught up: every change it may see below
        the horizon was read, and every change still to come has ``txid >= horizon``,
        so the cursor can move up to ``(horizon, 0)`` past changes it was not shown.
        A filtered read cut short by its scan limit examined everything up to
        ``scanned_to``, so the cursor moves there.
        """
        last = self.last or after
        if len(self.results) >= limit:
            return last
        if self.scanned_to is not None:
            return max(last, self.scanned_to)
        return max(last, Position(self.horizon, 0))


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


@dataclass(frozen=True)
class Events:
    """Which custom events a reader sees."""

    #: Events of the labels declared in ``PUBSUBPULL["EVENTS"]``.
    declared: bool = False
    #: pubsubpull's own subscription events (:data:`events.SUBSCRIPTION`) of every owner.
    all_subscriptions: bool = False
    #: ... or those of this owner's subscriptions (a user's primary key).
    owner: Any = None


#: Every custom event: the service's own code.
ALL_EVENTS = Events(declared=True, all_subscriptions=True)
#: No custom event.
NO_EVENTS = Events()


def scope(user: Any | None) -> tuple[list[str], Events]:
    """The model labels whose changes ``user`` may see, and which custom events:
    declared ones need ``pubsubpull.view_change``; pubsubpull's own subscription events
    (``pubsubpull.subscription.*``, to readers whose topics name them) are its owner's,
    and staff see all of them. ``None`` is the service's own code: everything."""
    if user is None:
        return [t.label for t in registry.tracked()], ALL_EVENTS
    seen = Events(
        declared=user.has_perm("pubsubpull.view_change"),
        all_subscriptions=bool(user.is_staff),
        owner=user.pk,
    )
    return [t.label for t in readable(user)], seen


def changes_page(
    models: list[str],
    after: Position,
    patterns: list[str],
    limit: int,
    using: str = "default",
    *,
    events: bool | Events = False,
    filter: str | None = None,
    until: Position | None = None,
    thin: bool = False,
) -> ChangesPage:
    """Changes after ``after`` (up to ``until``) below the horizon, of these model labels
    and the custom events ``events`` allows (an :class:`Events`, True for all, False for
    none), topic patterns and jsonpath ``filter``; ``thin``: each without ``old`` and
    ``new`` (the filter still sees them).

    A read with topics or a filter runs under ``PUBSUBPULL["FILTER_TIMEOUT"]``; a filter
    that fails or a read that takes too long raises :class:`QueryFailed`.
    """
    params: dict[str, Any] = {
        **_visible(models, after, patterns, events),
        "until_txid": str(until.txid) if until else None,
        "until_id": until.id if until else None,
        "filter": filter or None,
        "scan_limit": max(limit, SCAN_LIMIT) if filter else None,
        "limit": limit,
        "thin": thin,
    }
    query = render("changes_page", matches=load("filter_matches"), visible=load("changes_visible"))
    with reader_cursor(connections[using], bool(patterns or filter)) as cursor:
        cursor.execute(query, params)
        rows = cursor.fetchall()
    found = [row for row in rows if row[3] is not None]  # the first row may have none
    results = [doc for *_, doc in found]
    positions = [Position(int(txid), id) for _, _, txid, id, _, _ in found]
    topics = [topic for *_, topic, _ in found]
    first = positions[0] if positions else None
    last = positions[-1] if positions else None
    scanned_to = Position.parse(rows[0][1]) if rows[0][1] else None
    return ChangesPage(results, first, last, int(rows[0][0]), scanned_to, positions, topics)


def count_changes(
    models: list[str],
    after: Position,
    patterns: list[str],
    cap: int,
    using: str = "default",
    *,
    events: bool | Events = False,
) -> int:
    """How many changes :func:`changes_page` would give without a filter (after ``after``,
    below the horizon, of these model labels, custom events if ``events``, and topic
    patterns), counted up to ``cap``; no JSON is built.

    A count with topics runs under ``PUBSUBPULL["FILTER_TIMEOUT"]``, and raises
    :class:`QueryFailed` when it takes longer.
    """
    query = render("changes_count", visible=load("changes_visible"))
    with reader_cursor(connections[using], bool(patterns)) as cursor:
        cursor.execute(query, {**_visible(models, after, patterns, events), "cap": cap})
        return int(cursor.fetchone()[0])


def names_subscription_events(patterns: list[str]) -> bool:
    """Whether a topic pattern asks for pubsubpull's own subscription events by name: its
    first word is ``pubsubpull`` (``pubsubpull.subscription.*``, ``pubsubpull.#``). Only
    such a reader gets them: all topics (``[]``) and patterns starting with a wildcard
    (``#``) select what they did before these events existed."""
    app = SUBSCRIPTION_EVENTS.split(".")[0]
    return any(pattern.split(".")[0] == app for pattern in patterns)


def _visible(
    models: list[str], after: Position, patterns: list[str], events: bool | Events
) -> dict[str, Any]:
    """The parameters of ``changes_visible.sql``."""
    if isinstance(events, bool):
        events = ALL_EVENTS if events else NO_EVENTS
    return {
        "after_txid": str(after.txid),
        "after_id": after.id,
        "models": models,
        "events": events.declared,
        "subscription_events": SUBSCRIPTION_EVENTS,
        "named": names_subscription_events(patterns),
        "all_subscriptions": events.all_subscriptions,
        "owner": None if events.owner is None else str(events.owner),
        "topics": topics.any_regex(patterns),
        "row_topics": topics.row_topics(models, patterns),
    }


@contextmanager
def reader_cursor(connection: BaseDatabaseWrapper, limited: bool) -> Iterator[Any]:
    """A cursor for a read; ``limited`` when it evaluates a reader's topics or filter:
    then its statements are cancelled after ``PUBSUBPULL["FILTER_TIMEOUT"]`` and errors
    the reader caused raise :class:`QueryFailed` (others, such as the database going
    away, pass through)."""
    if not limited:
        with connection.cursor() as cursor:
            yield cursor
        return
    with _reader_errors(), time_limit(connection, conf.settings.FILTER_TIMEOUT) as cursor:
        yield cursor


@contextmanager
def time_limit(connection: BaseDatabaseWrapper, seconds: float) -> Iterator[Any]:
    """A cursor whose statements are cancelled after ``seconds``.

    The limit is transaction-local, inside a savepoint when the caller has a transaction
    open; there it is put back afterwards, so the caller's own statements keep theirs.
    """
    nested = connection.in_atomic_block
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('statement_timeout'), "
            "set_config('statement_timeout', %s, true)",
            [str(max(1, round(seconds * 1000)))],
        )
        previous = cursor.fetchone()[0]
        yield cursor
        if nested:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])


@contextmanager
def _reader_errors() -> Iterator[None]:
    """Errors caused by a reader's filter or topics, as :class:`QueryFailed`."""
    try:
        yield
    except OperationalError as error:
        if isinstance(error.__cause__, psycopg.errors.QueryCanceled):
            raise QueryFailed(
                f"the filter and topics took longer than {conf.settings.FILTER_TIMEOUT} s "
                "(PUBSUBPULL['FILTER_TIMEOUT']): use a simpler filter or fewer topic patterns",
                "timeout",
            ) from None
        raise
    except DatabaseError as error:
        message = str(error).splitlines()[0]
        if isinstance(error.__cause__, psycopg.errors.SyntaxError):
            raise QueryFailed(
                f"the filter is not a valid SQL/JSON path: {message}", "syntax"
            ) from None
        if isinstance(error.__cause__, _FILTER_ERRORS):
            raise QueryFailed(f"the filter failed: {message}", "error") from None
        raise


class TooManyWaiting(Exception):
    """``PUBSUBPULL["MAX_WAITING"]`` long polls wait in this process already; ``page`` is
    the answer to give at once (read without waiting)."""

    def __init__(self, page: ChangesPage) -> None:
        super().__init__("too many long polls are waiting")
        self.page = page


# Long polls waiting in this process, and a bound on their database work: a long poll
# holds no database connection between its reads (Django's is closed, and opened again by
# the next query), and at most CONCURRENT_READS of them use one at a time (to
# authenticate, to look up permissions, to read), so 200 long polls woken by one commit,
# which all come back at once, do not open 200 sessions at once.
CONCURRENT_READS = 4
_waiting = 0
_waiting_lock = threading.Lock()
_reads = threading.BoundedSemaphore(CONCURRENT_READS)


@contextmanager
def rationed(using: str = "default") -> Iterator[None]:
    """Run a long poll's database work as one of ``CONCURRENT_READS`` at a time in this
    process, with no connection held before or after it."""
    connection = connections[using]
    _release(connection)  # nothing held while queued
    with _reads:
        try:
            yield
        finally:
            _release(connection)


def wait_for_changes(
    models: list[str],
    after: Position,
    patterns: list[str],
    limit: int,
    wait: float,
    using: str = "default",
    *,
    events: bool | Events = False,
) -> ChangesPage:
    """Like :func:`changes_page`, but wait up to ``wait`` seconds for a first change.

    Woken by this process's :mod:`~pubsubpull.wakeups` watcher (one connection shared by
    every long poll), which also sees changes released by an older transaction that
    ended without writing. Raises :class:`TooManyWaiting` when the process has
    ``PUBSUBPULL["MAX_WAITING"]`` long polls waiting already and nothing is visible yet.
    """
    if wait <= 0:
        return changes_page(models, after, patterns, limit, using, events=events)

    def read() -> ChangesPage:
        with rationed(using):
            return changes_page(models, after, patterns, limit, using, events=events)

    page = read()
    if page.results:
        return page
    global _waiting
    with _waiting_lock:
        if _waiting >= conf.settings.MAX_WAITING:
            raise TooManyWaiting(page)
        _waiting += 1
    try:
        deadline = time.monotonic() + wait
        with wakeups.watcher(using).waiting() as watcher:
            while True:
                seen = watcher.generation  # before reading: a move after it wakes us
                page = read()
                remaining = deadline - time.monotonic()
                if page.results or remaining <= 0:
                    return page
                # at most a few seconds per wait: a safety net should the watcher be stuck
                watcher.wait(seen, min(remaining, 5.0))
    finally:
        with _waiting_lock:
            _waiting -= 1


def _release(connection: BaseDatabaseWrapper) -> None:
    """Close the request's database connection while it waits (Django opens it again at
    the next query), unless a transaction is open (``ATOMIC_REQUESTS``)."""
    if not connection.in_atomic_block:
        connection.close()


def _relation(tracked: registry.Tracked) -> dict[str, str]:
    return {
        "relation": pgsql.Identifier(tracked.table).as_string(),
        "pk": pgsql.Identifier(tracked.pk_column).as_string(),
        "doc": tracked.document_sql("r"),
    }


def instances_query(tracked: registry.Tracked, after: bool) -> str:
    """The SQL of a page of ``tracked``'s rows, after a primary key if ``after``; its
    parameters: ``after`` (the key) and ``limit`` (one more than the page)."""
    return render("instances_page", **_keyset(tracked, after))


def _keyset(tracked: registry.Tracked, after: bool) -> dict[str, str]:
    """The placeholders of a keyset query of ``tracked``'s rows, after a primary key if
    ``after``."""
    parts = _relation(tracked)
    return {**parts, "after": f"r.{parts['pk']} > %(after)s" if after else "true"}


def instances_page(
    tracked: registry.Tracked, after: Any, limit: int, using: str = "default"
) -> tuple[list[str], str | None]:
    """Up to ``limit`` rows after primary key ``after`` (None: from the start), as JSON
    texts, and the key to continue after (None when this was the last page)."""
    query = instances_query(tracked, after is not None)
    with connections[using].cursor() as cursor:
        cursor.execute(query, {"after": after, "limit": limit + 1})
        rows = cursor.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [doc for _, doc in rows], (rows[-1][0] if more else None)


def instances_key(
    tracked: registry.Tracked, after: Any, skip: int, using: str = "default"
) -> str | None:
    """The primary key of the row ``skip`` rows past the first after ``after`` (None:
    from the start), when rows follow it: a page starts after it. Else None."""
    query = render("instances_key", **_keyset(tracked, after is not None))
    with connections[using].cursor() as cursor:
        cursor.execute(query, {"after": after, "skip": skip})
        rows = cursor.fetchall()
    return str(rows[0][0]) if len(rows) == 2 else None


def row_estimates(tracked: list[registry.Tracked]) -> dict[str, int | None]:
    """PostgreSQL's estimate of each model's rows, by label (None before the table was
    first analyzed): for progress bars, never for logic."""
    tables = {t.table: t.label for t in tracked}
    with connections["default"].cursor() as cursor:
        cursor.execute(load("row_estimates"), {"tables": list(tables)})
        found = {tables[name]: rows for name, rows in cursor.fetchall()}
    return {t.label: found.get(t.label) for t in tracked}


def instance(tracked: registry.Tracked, pk: Any, using: str = "default") -> str | None:
    """One row as JSON text, or None."""
    with connections[using].cursor() as cursor:
        cursor.execute(render("instance", **_relation(tracked)), {"pk": pk})
        row = cursor.fetchone()
    return None if row is None else str(row[0])
