"""Dispatch after a wake-up: the subscriptions whose topics match the newly visible
changes, found with the same two queries whatever the number of subscriptions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pubsubpull import fanout, tasks
from pubsubpull.models import Subscription
from test_project.shop.models import Customer, Order
from tests.helpers import raw_connection

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_look() -> Iterator[None]:
    fanout.forget()
    yield
    fanout.forget()


def subscription(owner: User, name: str, topics: list[str], status: str = "active") -> int:
    return Subscription.objects.create(
        owner=owner, name=name, target="https://example.com/hook", topics=topics, status=status
    ).pk


def queued() -> set[int]:
    return tasks._waiting_deliveries()


def forget_jobs() -> None:
    with connection.cursor() as cursor:  # Procrastinate's tables outlive a test's flush
        cursor.execute("DELETE FROM procrastinate_jobs")


def test_new_changes_concern_the_subscriptions_their_topics_match(owner: User) -> None:
    customers = subscription(owner, "customers", ["shop.customer.*"])
    orders = subscription(owner, "orders", ["shop.order.insert"])
    everything = subscription(owner, "everything", [])
    billing = subscription(owner, "billing", ["billing.#"])
    subscription(owner, "paused", ["shop.customer.*"], status="paused")

    assert fanout.concerned() is None  # a first look knows nothing: the caller checks all
    customer = Customer.objects.create(name="c")
    assert sorted(fanout.concerned() or []) == sorted([customers, everything])
    assert fanout.concerned() == []  # nothing new since
    Order.objects.create(customer=customer, total=1)
    assert sorted(fanout.concerned() or []) == sorted([orders, everything])
    Customer.objects.filter(pk=customer.pk).update(name="d")
    Order.objects.all().delete()
    assert sorted(fanout.concerned() or []) == sorted([customers, everything])
    assert billing not in (fanout.concerned() or [])


def test_the_cost_does_not_grow_with_the_subscriptions(owner: User) -> None:
    def queries_for_one_change() -> tuple[int, int]:
        fanout.concerned()
        Customer.objects.create(name="c")
        with CaptureQueriesContext(connection) as queries:
            found = fanout.concerned() or []
        return len(queries), len(found)

    subscription(owner, "one", ["shop.customer.*"])
    few = queries_for_one_change()
    Subscription.objects.bulk_create(
        Subscription(
            owner=owner,
            name=f"s{n}",
            target="https://example.com/hook",
            topics=[["shop.customer.*"], ["shop.order.*"], ["shop.#"]][n % 3],
        )
        for n in range(300)
    )
    many = queries_for_one_change()
    assert few == (2, 1)
    assert many == (2, 1 + 100 + 100)  # still two queries; customer.* and shop.# match


def test_the_sweep_reads_a_few_pages_per_topic_group_not_one_per_subscription(
    owner: User,
) -> None:
    from pubsubpull import delivery, reads
    from pubsubpull.positions import START, Position

    Customer.objects.create(name="first")
    Customer.objects.create(name="second")
    labels, events = reads.scope(None)

    def customers() -> list[Position]:
        return reads.changes_page(labels, START, ["shop.customer.*"], 10, events=events).positions

    deadline = time.monotonic() + 10
    while len(customers()) < 2:
        assert time.monotonic() < deadline  # below the horizon once their transactions ended
        time.sleep(0.01)
    first, last = customers()

    def subscriptions(prefix: str, count: int, topics: list[str], cursor: Position) -> list[int]:
        return [
            Subscription.objects.create(
                owner=owner,
                name=f"{prefix}{n}",
                target="https://example.com/hook",
                topics=topics,
                cursor=str(cursor),
            ).pk
            for n in range(count)
        ]

    behind = subscriptions("behind", 10, ["shop.customer.*"], START)
    between = subscriptions("between", 10, ["shop.customer.*"], first)
    subscriptions("caught-up", 10, ["shop.customer.*"], last)
    subscriptions("orders", 5, ["shop.order.*"], START)  # no order written: none due
    in_flight = subscriptions("in-flight", 1, ["shop.order.*"], START)
    Subscription.objects.filter(pk__in=in_flight).update(batch_id="b", batch_end=str(last))

    with CaptureQueriesContext(connection) as queries:
        due = delivery.due_subscriptions()

    assert due == sorted(behind + between + in_flight)
    # customers: from the cursor furthest behind, from the first change, from the last;
    # orders: one; the batch in flight needs none
    assert sum("pubsubpull_change_json" in q["sql"] for q in queries.captured_queries) == 4


def test_a_pattern_no_put_would_accept_matches_everything(owner: User) -> None:
    broken = subscription(owner, "broken", ["not a pattern!"])
    fanout.concerned()
    Order.objects.create(customer=Customer.objects.create(name="c"), total=1)
    assert fanout.concerned() == [broken]  # its delivery job finds out, not the dispatch


def test_a_wake_up_dispatch_queues_only_the_concerned_the_sweep_all_due(owner: User) -> None:
    forget_jobs()
    customers = subscription(owner, "customers", ["shop.customer.*"])
    orders = subscription(owner, "orders", ["shop.order.*"])
    Customer.objects.create(name="before")
    Order.objects.create(customer=Customer.objects.create(name="buyer"), total=1)
    tasks.dispatch()  # this process's first dispatch: every due subscription
    assert queued() == {customers, orders}

    forget_jobs()
    Customer.objects.create(name="after")
    tasks.dispatch()  # a wake-up's: only what the new changes concern
    assert queued() == {customers}

    forget_jobs()
    tasks.dispatch(timestamp=int(time.time()))  # the sweep: every due subscription
    assert queued() == {customers, orders}


def test_a_dispatch_that_fails_midway_leaves_the_next_one_to_look_at_all(
    owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget_jobs()
    customers = subscription(owner, "customers", ["shop.customer.*"])
    tasks.dispatch()  # this process has looked
    Customer.objects.create(name="lost?")

    def broken(subscription_id: int, at: object = None, alone: bool = False) -> None:
        raise RuntimeError("queueing failed")

    monkeypatch.setattr(tasks, "defer_delivery", broken)
    with pytest.raises(RuntimeError):
        tasks.dispatch()  # read the new change's topic, then failed to queue its delivery
    monkeypatch.undo()
    tasks.dispatch()  # no new change since, but this one looks at every subscription
    assert queued() == {customers}


def test_every_sweep_interval_a_dispatch_looks_at_all_again(owner: User) -> None:
    # The periodic sweep is skipped while a wake-up's dispatch waits (shared queueing
    # lock): each process's dispatch does its full look itself.
    subscription(owner, "customers", ["shop.customer.*"])
    with override_settings(PUBSUBPULL={"SWEEP_INTERVAL": 1}):
        assert fanout.concerned() is None
        assert fanout.concerned() == []
        time.sleep(1.05)
        assert fanout.concerned() is None
        assert fanout.concerned() == []


def test_waking_a_subscription_brings_a_later_retry_forward(owner: User) -> None:
    forget_jobs()
    customers = subscription(owner, "customers", ["shop.customer.*"])
    later = timezone.now() + timedelta(hours=5)
    tasks.defer_delivery(customers, later)  # its retry, hours away

    with raw_connection() as listener:  # how workers hear of jobs to run
        listener.autocommit = True
        listener.execute("LISTEN procrastinate_any_queue_v1")
        tasks.wake(customers)  # resumed, replayed or changed: it may send now
        heard = list(listener.notifies(timeout=5, stop_after=1))

    with connection.cursor() as cursor:
        cursor.execute("SELECT id, scheduled_at FROM procrastinate_jobs WHERE status = 'todo'")
        ((job, scheduled_at),) = cursor.fetchall()
    assert scheduled_at is None  # due now, in place of the later retry
    assert [json.loads(n.payload) for n in heard] == [{"type": "job_inserted", "job_id": job}]
