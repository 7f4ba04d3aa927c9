"""Retention without cron: ``PUBSUBPULL["RETENTION"]`` applied by a periodic job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from pubsubpull import conf, prune
from pubsubpull.checks import check_settings
from pubsubpull.models import Change, Delivery, Request, Subscription
from pubsubpull.positions import Position
from pubsubpull.tasks import QUEUE, retention
from test_project.shop.models import Customer

KEEP_A_DAY = {"changes": "1d", "requests": "1d", "deliveries": "1d"}


def age(table: str, column: str, days: int) -> None:
    """Make every row of ``table`` ``days`` old (rows of the log are immutable to the ORM)."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {column} = now() - make_interval(days => %s)", [days])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30d", "must be a dict"),
        ({"changes": "a month"}, "is not a duration"),
        ({"changes": 30}, "is not a duration"),
        ({"logs": "30d"}, "'logs' is not one of changes, requests, deliveries, jobs"),
    ],
)
def test_e030_unusable_retention(value: object, message: str) -> None:
    with override_settings(PUBSUBPULL={"RETENTION": value}):
        (error,) = check_settings()
        assert error.id == "pubsubpull.E030" and message in error.msg
        assert conf.settings.RETENTION == {}  # nothing deleted on a mistyped setting


def test_usable_retention_passes_and_partly_usable_keeps_the_good_entries() -> None:
    with override_settings(PUBSUBPULL={"RETENTION": {"changes": "30d", "jobs": "12h"}}):
        assert check_settings() == []
    with override_settings(PUBSUBPULL={"RETENTION": {"changes": "30d", "requests": "x"}}):
        assert len(check_settings()) == 1
        assert conf.settings.RETENTION == {"changes": "30d"}


@pytest.mark.django_db
def test_off_by_default() -> None:
    Customer.objects.create(name="kept")
    age("pubsubpull_change", "created", 400)
    assert prune.apply_retention(timezone.now()) is None
    assert Change.objects.count() == 1


@pytest.mark.django_db
def test_retention_deletes_in_batches_and_never_what_a_subscriber_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prune, "RETENTION_BATCH", 2)
    owner = User.objects.create_user("subscriber")
    for i in range(5):
        Customer.objects.create(name=f"old{i}")
    changes = list(Change.objects.filter(model="shop.customer").order_by("id"))
    # a subscription that has received the first three changes only
    third = changes[2]
    subscription = Subscription.objects.create(
        owner=owner,
        name="behind",
        target="https://hooks.example.com/",
        cursor=str(Position(int(third.txid), third.id)),
    )
    Delivery.objects.create(
        subscription=subscription, batch_id="b", count=3, duration=timedelta(seconds=1)
    )
    age("pubsubpull_change", "created", 3)
    age("pubsubpull_delivery", "created", 3)
    Customer.objects.create(name="new")
    with override_settings(PUBSUBPULL={"RETENTION": KEEP_A_DAY}):
        pruned = prune.apply_retention(timezone.now())
    # the owner's creation (auth.user is tracked) and old0..old2: four in batches of two
    assert pruned is not None and pruned.changes == 4 and pruned.deliveries == 1
    names = [(c.new or {}).get("name") for c in Change.objects.order_by("id")]
    assert names == ["old3", "old4", "new"]  # old but not yet received, and new
    assert not Delivery.objects.exists()


@pytest.mark.django_db
def test_requests_go_with_their_last_change() -> None:
    Request.objects.create(method="POST", path="/x/", started=timezone.now())
    age("pubsubpull_request", "started", 3)
    with override_settings(PUBSUBPULL={"RETENTION": {"requests": "1d"}}):
        pruned = prune.apply_retention(timezone.now())
    assert pruned is not None and pruned.requests == 1 and not Request.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_periodic_job_in_a_worker_also_removes_old_finished_jobs() -> None:
    """The task runs in a real (one-shot) Procrastinate worker; of pubsubpull's finished
    jobs, those finished longer ago than RETENTION["jobs"] are deleted."""
    from procrastinate.contrib.django.models import ProcrastinateJob

    # The jobs deferred here; a worker that starts at minute 17 of an hour also queues the
    # periodic one (args {"timestamp": ...}).
    deferred = ProcrastinateJob.objects.filter(task_name="pubsubpull.retention", args={})
    Customer.objects.create(name="ancient")
    age("pubsubpull_change", "created", 10)
    settings = {"RETENTION": {**KEEP_A_DAY, "jobs": "1d"}}
    with override_settings(PUBSUBPULL=settings):
        retention.defer()
        call_command("procrastinate", "worker", "--one-shot", "--queues", QUEUE)
        first = deferred.get()
        assert first.status == "succeeded"
        assert not Change.objects.exists()
        with connection.cursor() as cursor:  # the first run finished two days ago
            cursor.execute(
                "UPDATE procrastinate_events SET at = at - interval '2 days' WHERE job_id = %s",
                [first.id],
            )
        retention.defer()
        call_command("procrastinate", "worker", "--one-shot", "--queues", QUEUE)
    jobs = list(deferred)
    assert [job.status for job in jobs] == ["succeeded"] and jobs[0].id != first.id
