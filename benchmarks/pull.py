"""Pull: reading a large tracked table page by page over HTTP, against Django REST framework
and against the floor; reading a large change log with and without topic filters.

A table of N ``TrackedRow`` rows is served by ``python -m django runserver --noreload`` (one
server process for both APIs, ``benchmarks.settings``, ``DEBUG = False``, database connections
kept between requests) and read from this process with pages of 1,000 rows:

- pubsubpull: ``pubsubpull.client.Service(...).instances("benchapp.trackedrow", limit=1000)``
  for scans (it asks for the next two pages while one is decoded) and one request for a single
  page, authenticated with a Bearer token (``pubsubpull.auth.create_token``); keyset pages.
  Also from a second server with ``CONN_MAX_AGE`` 0 (a database connection opened for
  every request).
- DRF: ``benchmarks.drf`` (a ``ModelSerializer`` + ``ModelViewSet``) with ``CursorPagination``
  ordered by primary key, and with ``LimitOffsetPagination``, read with ``requests`` following
  ``next``, authenticated by a session of the same user (HTTP Basic would hash the password on
  every request).
- The floor: the page queries of pubsubpull's instances endpoint
  (``pubsubpull.reads.instances_query``) run straight through psycopg, no HTTP.

Measured: the time of the first page and of the last page (keyset ``after``, a DRF cursor built
for the same position, the last ``offset``) and a scan of the whole table (rows/s). A limit-offset
scan costs O(N²): its rate is estimated from pages at evenly spaced offsets.

Then a change log of M changes (``CHANGES_FULL``, inserted straight into ``pubsubpull_change``,
1,000 a transaction) of which 1 in 1,000 is of the rare model ``shop.product`` and another 1 in
1,000 a delete: ``GET /changes/`` pages of 100 unfiltered, with a model filter and with a topic
filter, from the start, from the middle and caught up (after the present cursor: nothing new),
the last also on a log of 1,000 changes; the filtered pages once more without migration 0015's
indexes.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

from benchmarks import harness
from benchmarks.delivery import ROOT, fill, scaled

LABEL = "benchapp.trackedrow"
PAGE = 1000
FULL = 1_000_000  # rows in a full run
LAST_FIRST_GOAL = 1.2  # last page time / first page time, pubsubpull
FLOOR_GOAL = 0.5  # pubsubpull's scan rate / the floor's
KEEP = 600  # CONN_MAX_AGE (s) of the server every API is read from: connections kept
JSON = {"Accept": "application/json"}
OURS, COLD, FLOOR = "pubsubpull keyset", "pubsubpull keyset, CONN_MAX_AGE 0", "floor (psycopg)"

CHANGES_FULL = 1_000_000  # changes in the log of a full run
SMALL_LOG = 1_000  # changes in the small log a caught-up reader also reads
LOG_STATEMENT = 1_000  # changes per INSERT, each its own transaction (txid)
CHANGES_PAGE = 100  # changes a page (the default PAGE_SIZE)
FILTER_GOAL = 2.0  # filtered page time / unfiltered page time, same cursor
CAUGHT_UP_GOAL = 2.0  # caught-up page time on the large log / on the small one
UNFILTERED = "unfiltered"
FILTERS = {
    "model filter `shop.product.*`": "shop.product.*",
    "topic filter `*.*.delete`": "*.*.delete",
}
CURSORS = ("start", "middle", "caught up")
INDEXES = ("0015_change_topic_index", "0015_change_event_index")


class Server:
    """``manage.py runserver`` on a free loopback port, in a process of its own, keeping its
    database connections ``conn_max_age`` seconds (0: one connection per request)."""

    def __init__(self, conn_max_age: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in __exit__
            "w+", prefix="pubsubpull-bench-server-", suffix=".log"
        )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "PUBSUBPULL_BENCH_CONN_MAX_AGE": str(conn_max_age),
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "runserver",
                "--noreload",
                "--skip-checks",
                f"127.0.0.1:{port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    log = Path(self.log.name).read_text()
                    raise RuntimeError(f"runserver did not start: {log}") from None
                time.sleep(0.05)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.log.close()


def _credentials() -> tuple[str, str]:
    """A Bearer token and a session key of one superuser."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    from pubsubpull.auth import create_token

    user = User.objects.filter(username="bench-reader").first()
    if user is None:
        user = User.objects.create_superuser("bench-reader", password="not-used")
    _, token = create_token(user, "pull benchmark")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return token, str(session.session_key)


class Floor:
    """The page queries of pubsubpull's instances endpoint (``reads.instances_query``) on a
    psycopg connection of this process: no HTTP, no Django, no JSON decoding."""

    def __init__(self) -> None:
        import psycopg

        from pubsubpull import reads, registry

        tracked = registry.get(LABEL)
        assert tracked is not None
        self.queries = {after: reads.instances_query(tracked, after) for after in (False, True)}
        # client-side binding, as Django's backend does
        self.connection = psycopg.connect(
            os.environ["DATABASE_URL"], autocommit=True, cursor_factory=psycopg.ClientCursor
        )

    def close(self) -> None:
        self.connection.close()

    def page(self, after: int | None) -> list[tuple[Any, ...]]:
        """Up to ``PAGE + 1`` rows (key, JSON text) after ``after``, as the endpoint reads."""
        query = self.queries[after is not None]
        return self.connection.execute(query, {"after": after, "limit": PAGE + 1}).fetchall()

    def scan(self) -> int:
        rows, after = 0, None
        while True:
            page = self.page(after)
            rows += min(len(page), PAGE)
            if len(page) <= PAGE:
                return rows
            after = int(page[PAGE - 1][0])


class Readers:
    """The ways to read the table, each with its own keep-alive session or connection."""

    def __init__(self, base: str, cold: str, token: str, session_key: str, count: int) -> None:
        from pubsubpull.client import Service

        self.ours = Service(base + "pubsubpull/", token=token)
        self.cold = Service(cold + "pubsubpull/", token=token)
        self.floor = Floor()
        self.drf = requests.Session()
        self.drf.headers.update(JSON)
        self.drf.cookies.set("sessionid", session_key)
        self.base, self.count = base, count
        self.first_pk, self.last_pk = (int(v) for v in _pk_range())

    def close(self) -> None:
        self.ours.close()
        self.cold.close()
        self.floor.close()
        self.drf.close()

    # one page ------------------------------------------------------------------------------

    @staticmethod
    def ours_page(service: Any, after: int | None) -> int:
        """One page as the client reads it (the request and the decoding), without the
        request for the following page that ``instances()`` sends meanwhile."""
        params: dict[str, Any] = {"limit": PAGE}
        if after is not None:
            params["after"] = after
        page = service._get(service._url("models", LABEL), params, expect=("results",))
        return len(page["results"])

    def floor_page(self, after: int | None) -> int:
        return len(self.floor.page(after)[:PAGE])

    def _drf_get(self, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.drf.get(url, params=params, timeout=120)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def cursor_page(self, after: int | None) -> int:
        params = None
        if after is not None:  # the cursor DRF itself would give for this position
            params = {"cursor": base64.b64encode(f"p={after}".encode()).decode()}
        return len(self._drf_get(self.base + "drf/cursor/rows/", params)["results"])

    def offset_page(self, offset: int) -> int:
        params = {"limit": PAGE, "offset": offset}
        return len(self._drf_get(self.base + "drf/offset/rows/", params)["results"])

    def undecoded_page(self) -> bytes:
        """The first page over HTTP, as pubsubpull's client asks for it, not decoded."""
        url = self.ours._url("models", LABEL)
        response = self.ours.session.get(url, params={"limit": PAGE}, timeout=120)
        response.raise_for_status()
        return response.content

    # first and last pages ------------------------------------------------------------------

    def pages(self) -> dict[str, tuple[Callable[[], int], Callable[[], int]]]:
        """Per API: (first page, last page)."""
        before_last = self.last_pk - PAGE  # keyset: the last 1,000 rows come after this pk
        return {
            OURS: (
                lambda: self.ours_page(self.ours, None),
                lambda: self.ours_page(self.ours, before_last),
            ),
            COLD: (
                lambda: self.ours_page(self.cold, None),
                lambda: self.ours_page(self.cold, before_last),
            ),
            "DRF cursor": (lambda: self.cursor_page(None), lambda: self.cursor_page(before_last)),
            "DRF limit-offset": (
                lambda: self.offset_page(0),
                lambda: self.offset_page(self.count - PAGE),
            ),
            FLOOR: (lambda: self.floor_page(None), lambda: self.floor_page(before_last)),
        }

    # scans ---------------------------------------------------------------------------------

    def ours_scan(self) -> int:
        return sum(1 for _ in self.ours.instances(LABEL, limit=PAGE))

    def cold_scan(self) -> int:
        return sum(1 for _ in self.cold.instances(LABEL, limit=PAGE))

    def cursor_scan(self) -> int:
        rows = 0
        url: str | None = self.base + "drf/cursor/rows/"
        while url:
            page = self._drf_get(url)
            rows += len(page["results"])
            url = page["next"]
        return rows

    def offset_sample(self, pages: int) -> Iterator[int]:
        """Offsets of ``pages`` pages spread evenly over the table, first and last included."""
        last = self.count - PAGE
        return (round(last * i / max(pages - 1, 1)) for i in range(pages))


def _pk_range() -> tuple[int, int]:
    row = harness.execute("SELECT min(id), max(id) FROM benchapp_trackedrow")[0]
    return int(row[0]), int(row[1])


def _time(fn: Callable[[], int], expected: int) -> float:
    started = time.perf_counter()
    rows = fn()
    seconds = time.perf_counter() - started
    if rows != expected:
        raise RuntimeError(f"read {rows} rows, expected {expected}")
    return seconds


def _decoding(body: bytes) -> float:
    started = time.perf_counter()
    json.loads(body)
    return time.perf_counter() - started


def measure(readers: Readers, reps: int, tries: int, samples: int) -> dict[str, Any]:
    """First/last page seconds (median of ``tries`` per repetition), scan rows/s, and a
    page's time over HTTP undecoded and to decode."""
    count = readers.count
    first: dict[str, list[float]] = {}
    last: dict[str, list[float]] = {}
    scans: dict[str, list[float]] = {}
    undecoded: list[float] = []
    decoding: list[float] = []
    for rep in range(reps):
        for name, (first_page, last_page) in readers.pages().items():  # interleaved
            firsts, lasts = [], []
            for _ in range(tries):  # alternating, so drift hits both alike
                firsts.append(_time(first_page, PAGE))
                lasts.append(_time(last_page, PAGE))
            first.setdefault(name, []).append(harness.median(firsts))
            last.setdefault(name, []).append(harness.median(lasts))
        bodies = [harness.measure(readers.undecoded_page) for _ in range(tries)]
        undecoded.append(harness.median(bodies))
        decoding.append(harness.median(_decoding(readers.undecoded_page()) for _ in range(tries)))
        for name, scan in ((OURS, readers.ours_scan), (FLOOR, readers.floor.scan)):
            scans.setdefault(name, []).append(count / _time(scan, count))
        scans.setdefault(COLD, []).append(count / _time(readers.cold_scan, count))
        if rep == 0:  # the DRF scans are the slow part of the run: once is enough
            scans["DRF cursor"] = [count / _time(readers.cursor_scan, count)]
            spent = sum(
                _time(functools.partial(readers.offset_page, offset), PAGE)
                for offset in readers.offset_sample(samples)
            )
            scans["DRF limit-offset"] = [samples * PAGE / spent]
    return {
        "first": first,
        "last": last,
        "scans": scans,
        "undecoded": undecoded,
        "decoding": decoding,
    }


# The change log ----------------------------------------------------------------------------

# Changes in [%s, %s]: of benchapp.trackedrow (inserts 70 %, updates 30 %), but one in 1,000
# of shop.product (the rare model) and another one in 1,000 a delete (the rare op).
_LOG = """
INSERT INTO pubsubpull_change (topic, model, "table", op, pk, old, new)
SELECT c.model || '.' || c.op, c.model, replace(c.model, '.', '_'), c.op, g::text,
       CASE WHEN c.op <> 'insert' THEN c.row END, CASE WHEN c.op <> 'delete' THEN c.row END
FROM generate_series(%s, %s) AS g,
LATERAL (SELECT
    CASE WHEN g %% 1000 = 0 THEN 'shop.product' ELSE 'benchapp.trackedrow' END AS model,
    CASE WHEN g %% 1000 = 500 THEN 'delete' WHEN g %% 10 < 7 THEN 'insert' ELSE 'update' END
        AS op,
    jsonb_build_object('id', g, 'name', 'customer ' || g,
                       'email', 'customer' || g || '@example.com',
                       'amount', (g %% 100000) / 100.0, 'active', g %% 3 <> 0,
                       'payload', jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b')))
        AS row
) AS c
"""


def log(count: int) -> None:
    """A change log of ``count`` changes (ids 1 to ``count``), ``LOG_STATEMENT`` a transaction."""
    harness.reset_tables(changes=True)
    for first in range(1, count + 1, LOG_STATEMENT):
        harness.execute(_LOG, [first, min(first + LOG_STATEMENT, count + 1) - 1])
    harness.execute("VACUUM ANALYZE pubsubpull_change")


class ChangeReader:
    """``GET /changes/`` pages through Django's test client in this process, with a Bearer
    token: the whole request (middleware, authentication, the view, the query, the JSON)
    without the transfer. Over ``runserver`` a response smaller than one loopback segment
    waits about 40 ms for the client's delayed ACK (its headers and body are separate
    writes, and it does not set ``TCP_NODELAY``), which would be most of what is measured."""

    def __init__(self, token: str) -> None:
        from django.test import Client

        from pubsubpull.auth import digest
        from pubsubpull.models import Token

        self.client = Client(headers={**JSON, "Authorization": f"Bearer {token}"})
        self.user = Token.objects.get(digest=digest(token)).user

    def get(self, after: str, topics: str = "", limit: int = CHANGES_PAGE) -> dict[str, Any]:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if topics:
            params["topics"] = topics
        response = self.client.get("/pubsubpull/changes/", params)
        if response.status_code != 200:
            raise RuntimeError(
                f"GET /changes/ answered {response.status_code}: {response.content!r}"
            )
        return response.json()  # type: ignore[no-any-return]

    def seconds(self, after: str, topics: str, tries: int) -> float:
        """Median seconds of ``tries`` reads of one page."""
        return harness.median(
            harness.measure(lambda: self.get(after, topics)) for _ in range(tries)
        )

    def buffers(self, after: str, topics: str) -> int:
        """Shared buffers the page query of one read touched (EXPLAIN (ANALYZE, BUFFERS) of
        the query ``reads.changes_page`` runs for this user): unmoved by noise."""
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from pubsubpull import reads
        from pubsubpull import topics as patterns
        from pubsubpull.positions import Position

        models, events = reads.scope(self.user)
        with CaptureQueriesContext(connection) as queries:
            reads.changes_page(
                models, Position.parse(after), patterns.parse(topics), CHANGES_PAGE, events=events
            )
        (page,) = [q["sql"] for q in queries.captured_queries if "pubsubpull_change c" in q["sql"]]
        ((plan,),) = harness.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + page)
        top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
        return int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])

    def cursors(self, count: int) -> dict[str, str]:
        """The cursors of the log's start, of its middle change, and of the present."""
        (middle,) = harness.execute(
            "SELECT txid::text || '-' || id::text FROM pubsubpull_change WHERE id = %s",
            [max(count // 2, 1)],
        )[0]
        return {"start": "0-0", "middle": middle, "caught up": self.get("now", limit=1)["cursor"]}


def measure_log(
    reader: ChangeReader, count: int, reps: int, tries: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, tuple[int, int]]]:
    """Per read (unfiltered and each filter), per cursor: a page's seconds per repetition;
    also the caught-up page on a log of ``SMALL_LOG`` changes, before and after the large
    log (``"small"``), and once the filtered pages without migration 0015's indexes
    (``"<filter> without"``). And per read, the buffers of the caught-up page query on the
    large log and on the small one."""
    from pubsubpull.sql import migration_sql

    topics_of = {UNFILTERED: "", **FILTERS}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in topics_of}

    def small_log() -> dict[str, int]:
        log(SMALL_LOG)
        caught_up = reader.cursors(SMALL_LOG)["caught up"]
        for _ in range(reps):
            for name, topics in topics_of.items():
                seconds = reader.seconds(caught_up, topics, tries)
                times[name].setdefault("small", []).append(seconds)
        return {name: reader.buffers(caught_up, topics) for name, topics in topics_of.items()}

    small = small_log()
    log(count)
    cursors = reader.cursors(count)
    large = {name: reader.buffers(cursors["caught up"], t) for name, t in topics_of.items()}
    for _ in range(reps):
        for cursor in CURSORS:
            for name, topics in topics_of.items():  # interleaved
                seconds = reader.seconds(cursors[cursor], topics, tries)
                times[name].setdefault(cursor, []).append(seconds)
    harness.execute("DROP INDEX pubsubpull_change_topic, pubsubpull_change_event")
    try:
        for name, topics in FILTERS.items():
            times[f"{name} without"] = {
                cursor: [reader.seconds(cursors[cursor], topics, max(tries // 4, 1))]
                for cursor in ("start", "middle")
            }
    finally:
        for index in INDEXES:
            harness.execute(migration_sql(index))
    small_log()  # again: the small log's figures bracket the large log's in time
    return times, {name: (large[name], small[name]) for name in topics_of}


# The run -----------------------------------------------------------------------------------


def run(quick: bool, dry_run: bool) -> str:
    """Fill the table, serve it, read it; fill the log, read it; the markdown section."""
    from benchmarks.benchapp.models import TrackedRow

    count = harness.choose(quick, dry_run, full=FULL, fast=100_000, dry=3_000)
    changes = harness.choose(quick, dry_run, full=CHANGES_FULL, fast=100_000, dry=3_000)
    reps = harness.choose(quick, dry_run, full=3, fast=2, dry=1)
    tries = harness.choose(quick, dry_run, full=11, fast=7, dry=1)  # page reads per figure
    samples = harness.choose(quick, dry_run, full=20, fast=10, dry=3)  # limit-offset pages

    harness.reset_tables(TrackedRow, changes=True)
    fill(count)
    harness.reset_tables(changes=True)  # the change log is read in its own part, below
    token, session_key = _credentials()
    with Server(KEEP) as server, Server(0) as cold:
        readers = Readers(server.url, cold.url, token, session_key, count)
        try:
            for first_page, _ in readers.pages().values():  # warm up: imports, caches
                first_page()
            result = measure(readers, reps, tries, samples)
        finally:
            readers.close()
    harness.reset_tables(TrackedRow, changes=True)
    reader = ChangeReader(token)
    reader.get("0-0")  # warm up
    times, buffers = measure_log(reader, changes, reps, tries)
    harness.reset_tables(changes=True)
    return "\n\n".join(
        [
            report(count, reps, tries, samples, result),
            log_report(changes, reps, tries, times, buffers),
        ]
    )


def _per_second(values: list[float]) -> str:
    text = f"{harness.median(values):,.0f}"
    return text if len(values) < 2 else f"{text} ({min(values):,.0f}–{max(values):,.0f})"


def _ms(values: list[float]) -> str:
    return harness.seconds_cell([t * 1000 for t in values])


def report(count: int, reps: int, tries: int, samples: int, result: dict[str, Any]) -> str:
    first, last, scans = result["first"], result["last"], result["scans"]
    rows = []
    for name in first:
        ratios = harness.ratios(last[name], first[name])
        rate = scans[name]
        against = harness.ratios(scans[OURS], [harness.median(rate)] * len(scans[OURS]))
        rows.append(
            [
                name,
                _ms(first[name]),
                _ms(last[name]),
                harness.ratio_cell(ratios),
                _per_second(rate) + (" (est.)" if name == "DRF limit-offset" else ""),
                "1×" if name == OURS else harness.ratio_cell(against),
            ]
        )
    ours_ratio = harness.median(harness.ratios(last[OURS], first[OURS]))
    of_floor = harness.ratios(scans[OURS], scans[FLOOR])  # measured in the same repetitions
    factors = {
        name: harness.median(scans[OURS]) / harness.median(scans[name])
        for name in ("DRF cursor", "DRF limit-offset")
    }
    floor_page = harness.median(first[FLOOR]) * 1000
    undecoded = harness.median(result["undecoded"]) * 1000
    decoding = harness.median(result["decoding"]) * 1000
    lines = [
        "## Pull",
        "",
        f"A table of {count:,} `TrackedRow` rows{scaled(count, FULL)} read in pages of "
        f"{PAGE:,} over HTTP from `runserver --noreload` (one server process, `DEBUG = False`, "
        f"`CONN_MAX_AGE` {KEEP}: database connections kept between requests, for every API; "
        f"the row `{COLD}` reads from a second server that opens one for every request). "
        "pubsubpull through `pubsubpull.client.Service` with a Bearer token (a page: one "
        "request, decoded; a scan: `instances()`, which asks for the next two pages while one "
        "is decoded); DRF "
        "(`benchmarks/drf.py`: `ModelSerializer` + `ModelViewSet`) with `CursorPagination` "
        "ordered by pk and with `LimitOffsetPagination`, followed with `requests`, same user by "
        f"session. The `{FLOOR}` row: pubsubpull's own page queries "
        "(`pubsubpull.reads.instances_query`, the JSON built by PostgreSQL) run straight "
        "through psycopg on one connection of the benchmark's process: no HTTP, no Django, "
        "no decoding. Page times: median of "
        f"{tries} reads, {reps} repetition(s) (range in parentheses); the last page is reached by "
        "keyset `after`, by a DRF cursor built for the same pk, by `offset`. Scan: the whole "
        f"table following `next` (DRF cursor once); limit-offset estimated from {samples} pages "
        "at evenly spaced offsets, since a full limit-offset scan costs O(N²). The last column "
        "is pubsubpull's scan rate divided by this row's.",
        "",
        harness.table(
            [
                "API",
                "first page ms",
                "last page ms",
                "last / first",
                "scan rows/s",
                "pubsubpull faster by",
            ],
            rows,
        ),
        "",
        f"Where a page of {PAGE:,} rows goes: {floor_page:.3g} ms for the query through psycopg "
        f"(the floor's first page), {undecoded:.3g} ms for the same page over HTTP without "
        f"decoding it (authentication, Django, the server, the transfer), and "
        f"{decoding:.3g} ms more to decode its JSON (`json.loads`, as the client does).",
        "",
        "Goals:",
        "",
        f"- last page / first page ≤ {LAST_FIRST_GOAL}: {ours_ratio:.2f}, "
        f"{harness.verdict(ours_ratio <= LAST_FIRST_GOAL)}",
        f"- scan ≥ {FLOOR_GOAL}× the floor's rows/s: {harness.ratio_cell(of_floor)}, "
        f"{harness.verdict(harness.median(of_floor) >= FLOOR_GOAL)}",
    ]
    for name, factor in factors.items():
        lines.append(
            f"- faster than {name}: {factor:.2f}× its scan rate, {harness.verdict(factor > 1)}"
        )
    lines += ["", NOTES]
    return "\n".join(lines)


def log_report(
    count: int,
    reps: int,
    tries: int,
    times: dict[str, dict[str, list[float]]],
    buffers: dict[str, tuple[int, int]],
) -> str:
    rows = []
    for name in (UNFILTERED, *FILTERS):
        cells = times[name]
        rows.append([name, *(_ms(cells[c]) for c in CURSORS), _ms(cells["small"])])
    for name in FILTERS:
        cells = times[f"{name} without"]
        rows.append([f"{name}, without 0015's indexes", _ms(cells["start"]), _ms(cells["middle"])])
        rows[-1] += ["–", "–"]
    lines = [
        "### The change log",
        "",
        f"A log of {count:,} changes{scaled(count, CHANGES_FULL)}, inserted straight into "
        f"`pubsubpull_change` {LOG_STATEMENT:,} a transaction: `benchapp.trackedrow` inserts "
        "and updates, but 1 in 1,000 of `shop.product` and another 1 in 1,000 a delete, so each "
        f"filter matches 1 change in 1,000. `GET /changes/?limit={CHANGES_PAGE}` through "
        "Django's test client in the benchmark's process (the whole request, without the "
        "transfer: over `runserver` a response this small waits ~40 ms for a delayed ACK), the "
        "same user by Bearer token: the time of one page (median of "
        f"{tries} reads, {reps} repetition(s)) after `0-0`, after the middle change, and caught "
        "up (after the present cursor: nothing new), the last also on a log of "
        f"{SMALL_LOG:,} changes (before and after the large one). Without 0015's indexes: "
        "the same pages once more after dropping `pubsubpull_change_topic` and "
        "`pubsubpull_change_event` (rebuilt after; "
        f"median of {max(tries // 4, 1)} reads).",
        "",
        harness.table(
            [
                "read",
                "from the start ms",
                "from the middle ms",
                "caught up ms",
                f"caught up, log of {SMALL_LOG:,} ms",
            ],
            rows,
        ),
        "",
        "Goals:",
        "",
    ]
    unfiltered = times[UNFILTERED]
    for name in FILTERS:
        ratios = {c: harness.ratios(times[name][c], unfiltered[c]) for c in ("start", "middle")}
        worst = max(harness.median(r) for r in ratios.values())
        lines.append(
            f"- {name} page / unfiltered page ≤ {FILTER_GOAL}: "
            f"{harness.ratio_cell(ratios['start'])} from the start, "
            f"{harness.ratio_cell(ratios['middle'])} from the middle, "
            f"{harness.verdict(worst <= FILTER_GOAL)}"
        )
    growth = {  # per repetition on the large log, against the small log's median
        name: [t / harness.median(times[name]["small"]) for t in times[name]["caught up"]]
        for name in (UNFILTERED, *FILTERS)
    }
    worst = max(harness.median(r) for r in growth.values())
    lines.append(
        f"- caught-up page, log of {count:,} / log of {SMALL_LOG:,} ≤ {CAUGHT_UP_GOAL}: "
        + ", ".join(f"{harness.ratio_cell(r)} {n}" for n, r in growth.items())
        + f", {harness.verdict(worst <= CAUGHT_UP_GOAL)}; the buffers its query touched "
        "(EXPLAIN ANALYZE, large / small log): "
        + ", ".join(f"{large} / {small} {n}" for n, (large, small) in buffers.items())
    )
    lines += ["", LOG_NOTES]
    return "\n".join(lines)


NOTES = """\
Notes. pubsubpull's page is one keyset query (`pk > after ORDER BY pk LIMIT`) in which
PostgreSQL builds each row's JSON (`to_jsonb` minus excluded columns); the view joins the
texts. DRF loads model instances and serializes them field by field in Python; its cursor
pagination is a keyset too (flat page times), while limit-offset runs a `COUNT(*)` of the
table and skips `offset` rows on every page, so its pages get slower towards the end.
Beyond the floor's query, a page over HTTP costs a token lookup (one more query), a look
at the primary key index for where the page after next starts (the `Link` header names it
with `rel="prefetch"`: a scan asks for it with the next one, so the server builds two
pages at once), Django's request handling and the transfer on the server, and on the
client the decoding of its JSON into dicts, which the floor leaves as text; with
`CONN_MAX_AGE` 0 every page also opens a database connection, whose new backend plans its
first queries cold."""

LOG_NOTES = """\
Notes. A page is the changes after the cursor and below the safe horizon, in `(txid, id)`
order. Unfiltered it is a walk of the position index that stops after the page. A filter
naming topics or models is, since migration 0015, a range per topic of
`pubsubpull_change_topic` `(topic, txid, id)` ORed with one of `pubsubpull_change_event`
(custom events), then a sort of what they found: its cost grows with the changes the
filter matches after the cursor (here at most 1 in 1,000 of the log), not with the log.
Without the indexes the same read walks the position index testing every change, up to
the page's last match (from the middle: half the log when the page is not filled). A
caught-up reader's page is an index range probe after its cursor that finds nothing."""
