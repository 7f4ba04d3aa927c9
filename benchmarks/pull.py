"""Pull: reading a large tracked table page by page over HTTP, against Django REST framework.

A table of N ``TrackedRow`` rows is served by ``python -m django runserver --noreload`` (one
server process for both APIs, ``benchmarks.settings``, ``DEBUG = False``) and read from this
process with pages of 1,000 rows:

- pubsubpull: ``pubsubpull.client.Service(...).instances("benchapp.trackedrow", limit=1000)``
  authenticated with a Bearer token (``pubsubpull.auth.create_token``); keyset pages.
- DRF: ``benchmarks.drf`` (a ``ModelSerializer`` + ``ModelViewSet``) with ``CursorPagination``
  ordered by primary key, and with ``LimitOffsetPagination``, read with ``requests`` following
  ``next``, authenticated by a session of the same user (HTTP Basic would hash the password on
  every request).

Measured: the time of the first page and of the last page (keyset ``after``, a DRF cursor built
for the same position, the last ``offset``) and a scan of the whole table (rows/s). A limit-offset
scan costs O(N²): its rate is estimated from pages at evenly spaced offsets.
"""

from __future__ import annotations

import base64
import functools
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
from benchmarks.delivery import ROOT, conn_max_age, fill, scaled

LABEL = "benchapp.trackedrow"
PAGE = 1000
FULL = 1_000_000  # rows in a full run
LAST_FIRST_GOAL = 1.2  # last page time / first page time, pubsubpull
JSON = {"Accept": "application/json"}


class Server:
    """``manage.py runserver`` on a free loopback port, in a process of its own."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in __exit__
            "w+", prefix="pubsubpull-bench-server-", suffix=".log"
        )
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks.settings"}
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


class Readers:
    """The three ways to read the table, each with its own keep-alive session."""

    def __init__(self, base: str, token: str, session_key: str, count: int) -> None:
        from pubsubpull.client import Service

        self.ours = Service(base + "pubsubpull/", token=token)
        self.drf = requests.Session()
        self.drf.headers.update(JSON)
        self.drf.cookies.set("sessionid", session_key)
        self.base, self.count = base, count
        self.first_pk, self.last_pk = (int(v) for v in _pk_range())

    def close(self) -> None:
        self.ours.close()
        self.drf.close()

    # one page ------------------------------------------------------------------------------

    def ours_page(self, after: int | None) -> int:
        rows = 0
        for _ in self.ours.instances(LABEL, after=after, limit=PAGE):
            rows += 1
            if rows == PAGE:  # stop before the generator asks for the next page
                break
        return rows

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

    # first and last pages ------------------------------------------------------------------

    def pages(self) -> dict[str, tuple[Callable[[], int], Callable[[], int]]]:
        """Per API: (first page, last page)."""
        before_last = self.last_pk - PAGE  # keyset: the last 1,000 rows come after this pk
        return {
            "pubsubpull keyset": (
                lambda: self.ours_page(None),
                lambda: self.ours_page(before_last),
            ),
            "DRF cursor": (lambda: self.cursor_page(None), lambda: self.cursor_page(before_last)),
            "DRF limit-offset": (
                lambda: self.offset_page(0),
                lambda: self.offset_page(self.count - PAGE),
            ),
        }

    # scans ---------------------------------------------------------------------------------

    def ours_scan(self) -> int:
        return sum(1 for _ in self.ours.instances(LABEL, limit=PAGE))

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


def measure(readers: Readers, reps: int, tries: int, samples: int) -> dict[str, Any]:
    """First/last page seconds (median of ``tries`` per repetition) and scan rows/s."""
    count = readers.count
    first: dict[str, list[float]] = {}
    last: dict[str, list[float]] = {}
    scans: dict[str, list[float]] = {}
    for rep in range(reps):
        for name, (first_page, last_page) in readers.pages().items():  # interleaved
            firsts, lasts = [], []
            for _ in range(tries):  # alternating, so drift hits both alike
                firsts.append(_time(first_page, PAGE))
                lasts.append(_time(last_page, PAGE))
            first.setdefault(name, []).append(harness.median(firsts))
            last.setdefault(name, []).append(harness.median(lasts))
        scans.setdefault("pubsubpull keyset", []).append(count / _time(readers.ours_scan, count))
        if rep == 0:  # the DRF scans are the slow part of the run: once is enough
            scans["DRF cursor"] = [count / _time(readers.cursor_scan, count)]
            spent = sum(
                _time(functools.partial(readers.offset_page, offset), PAGE)
                for offset in readers.offset_sample(samples)
            )
            scans["DRF limit-offset"] = [samples * PAGE / spent]
    return {"first": first, "last": last, "scans": scans}


def run(quick: bool, dry_run: bool) -> str:
    """Fill the table, serve it, read it; the markdown section."""
    from benchmarks.benchapp.models import TrackedRow

    count = harness.choose(quick, dry_run, full=FULL, fast=100_000, dry=3_000)
    reps = harness.choose(quick, dry_run, full=3, fast=2, dry=1)
    tries = harness.choose(quick, dry_run, full=11, fast=7, dry=1)  # page reads per figure
    samples = harness.choose(quick, dry_run, full=20, fast=10, dry=3)  # limit-offset pages

    harness.reset_tables(TrackedRow, changes=True)
    fill(count)
    harness.reset_tables(changes=True)  # the change log is not read here: keep it small
    token, session_key = _credentials()
    with Server() as server:
        readers = Readers(server.url, token, session_key, count)
        try:
            for first_page, _ in readers.pages().values():  # warm up: imports, caches
                first_page()
            result = measure(readers, reps, tries, samples)
        finally:
            readers.close()
    harness.reset_tables(TrackedRow, changes=True)
    return report(count, reps, tries, samples, result)


def _per_second(values: list[float]) -> str:
    text = f"{harness.median(values):,.0f}"
    return text if len(values) < 2 else f"{text} ({min(values):,.0f}–{max(values):,.0f})"


def report(count: int, reps: int, tries: int, samples: int, result: dict[str, Any]) -> str:
    first, last, scans = result["first"], result["last"], result["scans"]
    ours = "pubsubpull keyset"
    rows = []
    for name in first:
        ratios = harness.ratios(last[name], first[name])
        rate = scans[name]
        against = harness.ratios(scans[ours], [harness.median(rate)] * len(scans[ours]))
        rows.append(
            [
                name,
                harness.seconds_cell([t * 1000 for t in first[name]]),
                harness.seconds_cell([t * 1000 for t in last[name]]),
                harness.ratio_cell(ratios),
                _per_second(rate) + (" (est.)" if name == "DRF limit-offset" else ""),
                "1×" if name == ours else harness.ratio_cell(against),
            ]
        )
    ours_ratio = harness.median(harness.ratios(last[ours], first[ours]))
    factors = {
        name: harness.median(scans[ours]) / harness.median(scans[name])
        for name in scans
        if name != ours
    }
    lines = [
        "## Pull",
        "",
        f"A table of {count:,} `TrackedRow` rows{scaled(count, FULL)} read in pages of "
        f"{PAGE:,} over HTTP from `runserver --noreload` (one server process, `DEBUG = False`, "
        f"`CONN_MAX_AGE` {conn_max_age()}: at 0 every request opens a database connection, "
        "for either API). "
        "pubsubpull through `pubsubpull.client.Service.instances()` with a Bearer token; DRF "
        "(`benchmarks/drf.py`: `ModelSerializer` + `ModelViewSet`) with `CursorPagination` "
        "ordered by pk and with `LimitOffsetPagination`, followed with `requests`, same user by "
        "session. Page times: median of "
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
        "Goals:",
        "",
        f"- last page / first page ≤ {LAST_FIRST_GOAL}: {ours_ratio:.2f}, "
        f"{harness.verdict(ours_ratio <= LAST_FIRST_GOAL)}",
    ]
    for name, factor in factors.items():
        lines.append(
            f"- faster than {name}: {factor:.2f}× its scan rate, {harness.verdict(factor > 1)}"
        )
    lines += ["", NOTES]
    return "\n".join(lines)


NOTES = """\
Notes. pubsubpull's page is one keyset query (`pk > after ORDER BY pk LIMIT`) in which
PostgreSQL builds each row's JSON (`to_jsonb` minus excluded columns); the view joins the
texts. DRF loads model instances and serializes them field by field in Python; its cursor
pagination is a keyset too (flat page times), while limit-offset runs a `COUNT(*)` of the
table and skips `offset` rows on every page, so its pages get slower towards the end."""
