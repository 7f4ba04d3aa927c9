"""Writers never wait on pubsubpull, and nothing committed is lost under concurrency.

Real PostgreSQL, a real worker subprocess delivering to a loopback receiver, writers on
psycopg connections of their own. Each test checks that every committed change is
received (or pulled) exactly as at-least-once allows, in position order per subscription.
"""

from __future__ import annotations

import functools
import io
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from pytest_httpserver import HTTPServer

from test_project.shop.models import Customer, Order
from tests.delivery_helpers import put
from tests.reliability.concurrency_helpers import (
    DEADLOCK,
    Key,
    Outcome,
    Recorder,
    Workload,
    connect,
    hook,
    key,
    logged_keys,
    missing,
    position,
    pull,
    row_waits,
    run_writers,
    running_worker,
    start_position,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)

WRITE_SECONDS = 20.0  # each run of the 8-writer workload (once without, once with subscriptions)
WRITERS = 8
ROWS = 32  # customers and orders the writers share
PRUNE_WRITE_SECONDS = 8.0  # writes while prune runs again and again
FAST = 1.0  # seconds: a writer must never wait longer for another's open transaction
DELIVERY_TIMEOUT = 90.0  # seconds to wait for everything to arrive after the writes


@pytest.fixture
def monitor() -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection that watches ``pg_stat_activity``."""
    with connect(autocommit=True) as conn:
        yield conn


def insert_customer(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(
        "INSERT INTO shop_customer (name, email, password, active) VALUES (%s, '', '', true)"
        " RETURNING id",
        [name],
    ).fetchone()
    assert row is not None
    return int(row[0])


def markers(changes: list[dict[str, Any]]) -> list[str]:
    """What each change wrote: a customer's name, an order's note, a product's sku."""
    return [key(change)[2] for change in changes]


def second_writer(b: psycopg.Connection[Any], n: int, buyer: int) -> dict[str, float]:
    """B's autocommit inserts into three tracked tables; seconds each took."""
    statements: dict[str, Callable[[], object]] = {
        "same table": lambda: insert_customer(b, f"B{n}"),
        "another table": lambda: b.execute(
            "INSERT INTO shop_product (sku, name, price) VALUES (%s, 'p', 1)", [f"B{n}-sku"]
        ),
        "a third, referencing a committed row": lambda: b.execute(
            "INSERT INTO shop_order (customer_id, total, note, created) VALUES (%s, 1, %s, now())",
            [buyer, f"B{n}-order"],
        ),
    }
    durations: dict[str, float] = {}
    for what, statement in statements.items():
        started = time.monotonic()
        statement()
        durations[what] = time.monotonic() - started
    return durations


def watching_waits(
    work: Callable[[], dict[str, float]], monitor: psycopg.Connection[Any]
) -> tuple[dict[str, float] | BaseException, list[tuple[Any, ...]]]:
    """Run ``work`` in a thread while sampling row-lock waits in ``pg_stat_activity``;
    its result (or exception) and the waits seen."""
    outcome: list[dict[str, float] | BaseException] = []
    waits: set[tuple[Any, ...]] = set()

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # noqa: BLE001 - returned to the caller
            outcome.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    while thread.is_alive():  # ends within its statement timeout
        waits.update(row_waits(monitor))
        thread.join(timeout=0.01)
    waits.update(row_waits(monitor))
    return outcome[0], list(waits)


def test_a_writer_never_waits_for_another_open_transaction(
    api: Client, httpserver: HTTPServer, monitor: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """With an active subscription and a waiting worker, while A has inserted a tracked row
    and stays open, B's autocommit inserts into the same and other tracked tables finish
    at once, without waiting on a lock; then both commit and every change arrives."""
    recorder = Recorder()
    put(api, "live", {"target": hook(httpserver, recorder, "/c1"), "topics": ["shop.#"]}, 201)
    buyer = Customer.objects.create(name="warm-up").pk
    expected = ["warm-up"]
    with running_worker(tmp_path) as worker:
        wait_until(lambda: markers(recorder.in_order()) == expected, 60, "the warm-up", worker)
        for attempt in range(3):
            with connect() as a, connect(autocommit=True) as b:
                b.execute("SET statement_timeout = '3s'")  # fail, never hang
                insert_customer(a, f"A{attempt}")  # A stays open with its txid
                durations, waits = watching_waits(
                    functools.partial(second_writer, b, attempt, buyer), monitor
                )
                assert not isinstance(durations, BaseException), f"{durations!r}; {waits}"
                assert not waits, f"a writer waited on another's transaction: {waits}"
                assert max(durations.values()) < FAST, durations
                a.commit()
            expected += [f"A{attempt}", f"B{attempt}", f"B{attempt}-sku", f"B{attempt}-order"]
        wait_until(lambda: len(recorder.in_order()) >= len(expected), 60, "delivery", worker)
    # position order: A took its txid before B's autocommit statements took theirs
    assert markers(recorder.in_order()) == expected


def update(conn: psycopg.Connection[Any], customer: int, name: str) -> None:
    conn.execute("UPDATE shop_customer SET name = %s WHERE id = %s", [name, customer])


def hold_and_commit(
    b: psycopg.Connection[Any], y: int, name: str, updated: threading.Event
) -> list[psycopg.Error]:
    """B: update Y, say so, commit half a second later; the errors PostgreSQL raised."""
    try:
        update(b, y, name)
        updated.set()
        time.sleep(0.5)
        b.commit()
    except psycopg.Error as error:
        b.rollback()
        return [error]
    return []


def test_the_deadlock_free_pattern_never_deadlocks(
    api: Client, httpserver: HTTPServer, tmp_path: Path
) -> None:
    """A updates X; B updates Y and commits half a second later; meanwhile A updates Y,
    so A waits for B. Five times with a subscription active: no deadlock, and every
    change arrives in position order (A's before B's: A took its txid first), while
    ``seq`` shows A's update of Y is the newer version."""
    recorder = Recorder()
    put(api, "pattern", {"target": hook(httpserver, recorder, "/c2"), "topics": ["shop.#"]}, 201)
    x = Customer.objects.create(name="X").pk
    y = Customer.objects.create(name="Y").pk
    errors: list[psycopg.Error] = []
    expected: list[str] = ["X", "Y"]
    with running_worker(tmp_path) as worker:
        for attempt in range(5):
            with connect() as a, connect() as b, ThreadPoolExecutor(1) as pool:
                for conn in (a, b):
                    conn.execute("SET lock_timeout = '10s'")  # fail, never hang
                    conn.commit()
                updated = threading.Event()
                update(a, x, f"A{attempt}-x")
                b_errors = pool.submit(hold_and_commit, b, y, f"B{attempt}-y", updated)
                try:
                    updated.wait(timeout=5)
                    update(a, y, f"A{attempt}-y")  # waits for B's commit
                    a.commit()
                except psycopg.Error as error:
                    errors.append(error)
                    a.rollback()
                errors += b_errors.result(timeout=30)
            expected += [f"A{attempt}-x", f"A{attempt}-y", f"B{attempt}-y"]
        assert not errors, errors  # in particular no deadlock_detected
        wait_until(lambda: len(recorder.in_order()) >= len(expected), 60, "delivery", worker)
    received = recorder.in_order()
    assert markers(received) == expected
    seq = {c["new"]["name"]: c["seq"] for c in received}
    for attempt in range(5):  # A changed Y after B's commit: the newer version of Y
        assert seq[f"A{attempt}-y"] > seq[f"B{attempt}-y"]


def workload_rows(tag: str) -> Workload:
    customers = [Customer.objects.create(name=f"{tag}c{i}") for i in range(ROWS)]
    orders = [Order.objects.create(customer=customers[i], total=1) for i in range(ROWS)]
    return Workload([c.pk for c in customers], [o.pk for o in orders], tag)


def check_logged_and_pulled(api: Client, after: str, outcome: Outcome) -> dict[Any, Key]:
    """The change log and ``GET /changes/`` both hold exactly what the writers committed."""
    logged = logged_keys(after)
    assert set(logged.values()) == outcome.committed
    assert len(logged) == len(outcome.committed)  # one change per key
    assert not set(logged.values()) & outcome.rolled_back
    expected = sorted(logged)

    def pulled_all() -> bool:
        return [position(c) for c in pull(api, after)] == expected

    wait_until(pulled_all, 30, "every committed change to be visible to pull")
    pulled = pull(api, after)
    assert {key(c) for c in pulled} == outcome.committed
    return logged


def test_eight_writers_with_subscriptions_abort_no_more_and_lose_nothing(
    api: Client, httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """8 writers, long and short transactions on overlapping rows (locked in key order, so
    the workload cannot deadlock by itself), some rolled back, some autocommit: once with
    no subscription, once with two active subscriptions and a worker delivering. PostgreSQL
    aborts no more transactions with subscriptions; each subscription receives, and
    ``GET /changes/`` pages through, exactly the committed changes, in position order."""
    workload = workload_rows("a")
    after = start_position(api)
    baseline = run_writers(workload, WRITERS, WRITE_SECONDS, seed=1)
    check_logged_and_pulled(api, after, baseline)

    first, second = Recorder(), Recorder()
    put(api, "first", {"target": hook(httpserver, first, "/c3/first"), "topics": ["shop.#"]}, 201)
    put(
        api,
        "second",
        {"target": hook(httpserver, second, "/c3/second"), "topics": ["shop.#"], "batch_size": 37},
        201,
    )
    workload.tag = "b"
    after = start_position(api)
    with running_worker(tmp_path) as worker:
        subscribed = run_writers(workload, WRITERS, WRITE_SECONDS, seed=2)
        written = time.monotonic()
        wait_until(
            lambda: first.keys() >= subscribed.committed <= second.keys(),
            DELIVERY_TIMEOUT,
            "delivery",
            worker,
            explain=lambda: missing({"first": first, "second": second}, subscribed.committed, api),
        )
        drained = time.monotonic() - written
    logged = check_logged_and_pulled(api, after, subscribed)

    with capsys.disabled():
        for label, outcome in (("without subscriptions", baseline), ("with 2", subscribed)):
            print(
                f"\n{label}: {outcome.commits} commits, {outcome.rollbacks} rolled back on "
                f"purpose, {len(outcome.committed)} changes, aborted: {dict(outcome.errors)}"
            )
        print(f"delivered {drained:.1f} s after the last write")
    assert baseline.errors[DEADLOCK] == 0  # locked in key order: no deadlock by itself
    for kind, count in subscribed.errors.items():
        assert count <= baseline.errors[kind], (kind, subscribed.errors, baseline.errors)
    assert subscribed.commits > 0 and subscribed.rollbacks > 0
    for recorder in (first, second):
        received = recorder.in_order()  # checks order and duplicates
        positions = [position(c) for c in received]
        assert positions == sorted(logged)  # exactly the committed changes
        assert {key(c) for c in received} == subscribed.committed


def test_prune_while_delivering_never_removes_what_a_subscriber_lacks(
    api: Client, httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``manage.py pubsubpull prune --older-than 0m`` runs again and again while writers
    write and a worker delivers to a fast and a slow subscription: every committed
    change still arrives at both, in order; and prune did delete received changes."""
    workload = workload_rows("p")
    fast, slow = Recorder(), Recorder(delay=0.01)
    put(api, "fast", {"target": hook(httpserver, fast, "/c4/fast"), "topics": ["shop.#"]}, 201)
    put(
        api,
        "slow",
        {"target": hook(httpserver, slow, "/c4/slow"), "topics": ["shop.#"], "batch_size": 20},
        201,
    )
    stop = threading.Event()
    deleted: list[int] = []
    prune_failure: list[BaseException] = []

    def prune_loop() -> None:
        try:
            while not stop.is_set():
                out = io.StringIO()
                call_command("pubsubpull", "prune", "--older-than", "0m", stdout=out)
                match = re.search(r"deleted (\d+) changes", out.getvalue())
                assert match, out.getvalue()
                deleted.append(int(match[1]))
                stop.wait(0.05)
        except BaseException as error:  # noqa: BLE001 - asserted below
            prune_failure.append(error)
        finally:
            connection.close()  # this thread's own connection

    pruner = threading.Thread(target=prune_loop)
    with running_worker(tmp_path) as worker:
        pruner.start()
        try:
            outcome = run_writers(workload, 4, PRUNE_WRITE_SECONDS, seed=3)
            written = time.monotonic()
            wait_until(
                lambda: fast.keys() >= outcome.committed <= slow.keys() or bool(prune_failure),
                DELIVERY_TIMEOUT,
                "delivery",
                worker,
                explain=lambda: missing({"fast": fast, "slow": slow}, outcome.committed, api),
            )
            drained = time.monotonic() - written
        finally:
            stop.set()
            pruner.join(timeout=60)
    with capsys.disabled():
        print(
            f"\nprune ran {len(deleted)} times, deleted {sum(deleted)} of "
            f"{len(outcome.committed)} changes; delivered {drained:.1f} s after the last write"
        )
    assert not pruner.is_alive() and not prune_failure, prune_failure
    assert not outcome.errors, outcome.errors
    assert len(deleted) > 10 and sum(deleted) > 0, deleted  # prune ran, and deleted
    for recorder in (fast, slow):
        received = recorder.in_order()  # checks order and duplicates
        assert {key(c) for c in received} == outcome.committed
