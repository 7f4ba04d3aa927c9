"""The wake-up watcher: wakes waiters when new changes become visible, holds no lock a
writer could wait on, and closes its connection when nobody waits; the dispatch it queues
reaches the worker even when Procrastinate drops the wake-up."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref

import pytest
from django.db import connection

from pubsubpull import tasks, wakeups, worker
from test_project.shop.models import Customer
from tests.helpers import raw_connection, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def watcher_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            ["%pg_snapshot_xmin%"],
        )
        return int(cursor.fetchone()[0])


def test_wakes_a_waiter_when_a_commit_makes_changes_visible() -> None:
    watcher = wakeups.watcher()
    with watcher.waiting():
        assert watcher.connected.wait(10)
        seen = watcher.generation
        assert watcher.wait(seen, 0.3) == seen  # nothing new: no wake-up
        Customer.objects.create(name="visible")
        assert watcher.wait(seen, 10) != seen


def test_wakes_when_an_older_transaction_that_wrote_nothing_ends() -> None:
    watcher = wakeups.watcher()
    with watcher.waiting(), raw_connection() as older:
        assert watcher.connected.wait(10)
        older.execute("SELECT pg_current_xact_id()")  # takes a txid, holds the horizon
        Customer.objects.create(name="hidden behind the older transaction")
        time.sleep(0.2)  # the watcher has looked a few times: the change is not visible
        seen = watcher.generation
        assert watcher.wait(seen, 0.3) == seen
        older.rollback()  # writes nothing, so nothing else could announce it
        assert watcher.wait(seen, 10) != seen


def test_closes_its_connection_when_nobody_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wakeups, "LINGER", 0.1)
    watcher = wakeups.watcher()
    with watcher.waiting():
        assert watcher.connected.wait(10)
        assert watcher_backends() == 1
    deadline = time.monotonic() + 10
    while watcher.connected.is_set() or watcher_backends():
        assert time.monotonic() < deadline, "the watcher kept its connection"
        time.sleep(0.05)


def test_a_nudge_survives_a_fetch_that_clears_the_flag_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Procrastinate clears its new-job flag after every fetch: a nudge that lands while a
    # fetch runs (one that began before the job was committed, and finds nothing) would be
    # lost, and the job would wait for the next poll. The nudge sets it again a little later.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        flag = asyncio.run_coroutine_threadsafe(_new_event(), loop).result(5)
        fake = _FakeWorker(loop, flag)
        monkeypatch.setattr(worker, "_workers", weakref.WeakSet([fake]))

        monkeypatch.setattr(worker, "NUDGE_AGAIN", 0.5)  # the clear below lands before it
        worker.nudge()
        wait_until(flag.is_set)
        loop.call_soon_threadsafe(flag.clear)  # the fetch running meanwhile ends
        wait_until(lambda: not flag.is_set())
        wait_until(flag.is_set)  # set again: the worker fetches once more
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


class _FakeWorker:
    """What nudge() uses of a Procrastinate worker: its loop and its new-job flag."""

    def __init__(self, loop: asyncio.AbstractEventLoop, flag: asyncio.Event) -> None:
        self._loop, self._new_job_event = loop, flag


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


def test_a_dispatch_already_waiting_is_nudged_for_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # A nudge lost in a fetch leaves the dispatch waiting; the next look that finds new
    # changes cannot queue another (its queueing lock), and nudges for the waiting one.
    nudges: list[int] = []
    monkeypatch.setattr(worker, "nudge", lambda: nudges.append(1))
    with raw_connection() as own:
        own.autocommit = True
        worker._queue_dispatch(own)
        worker._queue_dispatch(own)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s AND status = 'todo'",
            [tasks.DISPATCH],
        )
        assert cursor.fetchone()[0] == 1  # one dispatch waits
    assert nudges == [1, 1]  # and both looks nudged for it
