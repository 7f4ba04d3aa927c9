"""The wake-up watcher: wakes waiters when new changes become visible, holds no lock a
writer could wait on, and closes its connection when nobody waits."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from pubsubpull import wakeups
from test_project.shop.models import Customer
from tests.helpers import raw_connection

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
