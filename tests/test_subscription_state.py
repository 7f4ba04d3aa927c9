"""A subscription's delivery state, changed only by ``Subscription``'s methods, and its lag."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pubsubpull import delivery, local_subscribers, reads, subscriptions
from pubsubpull.events import publish
from pubsubpull.models import LOCAL_PREFIX, Delivery, Subscription
from pubsubpull.positions import START, Position
from test_project.shop.models import Customer, Order
from tests.helpers import raw_connection

pytestmark = pytest.mark.django_db(transaction=True)

IN_FLIGHT: dict[str, Any] = {"batch_id": "b1", "batch_end": "9-9"}
FAILED: dict[str, Any] = {
    "status": "failing",
    "failures": 3,
    "last_error": "HTTP 500",
    "next_attempt": None,
}


def subscription(owner: User | None, name: str = "s", **values: Any) -> Subscription:
    fields = {"target": "https://hooks.example.com/", "cursor": str(reads.now()), **values}
    return Subscription.objects.create(owner=owner, name=name, **fields)


def state(sub: Subscription) -> dict[str, Any]:
    fields = ("status", "cursor", "batch_id", "batch_end", "failures", "last_error")
    row: dict[str, Any] = (
        Subscription.objects.filter(pk=sub.pk).values(*fields, "next_attempt").get()
    )
    return row


def test_pause_keeps_the_cursor_and_the_batch_in_flight(owner: User) -> None:
    sub = subscription(owner, **IN_FLIGHT)
    assert Subscription.objects.filter(pk=sub.pk).pause() == 1
    after = state(sub)
    assert after["status"] == Subscription.Status.PAUSED
    assert (after["batch_id"], after["batch_end"], after["cursor"]) == ("b1", "9-9", sub.cursor)


def test_resume_clears_failures_retry_time_and_last_error(owner: User) -> None:
    sub = subscription(owner, **{**FAILED, "next_attempt": timezone.now()}, **IN_FLIGHT)
    Subscription.objects.filter(pk=sub.pk).resume()
    after = state(sub)
    assert after["status"] == Subscription.Status.ACTIVE
    assert (after["failures"], after["last_error"], after["next_attempt"]) == (0, "", None)
    assert after["batch_id"] == "b1"  # the batch in flight is retried, not dropped


def test_replay_sets_the_cursor_and_drops_the_batch_in_flight(owner: User) -> None:
    sub = subscription(owner, **IN_FLIGHT)
    Subscription.objects.filter(pk=sub.pk).replay(Position(5, 7))
    after = state(sub)
    assert (after["cursor"], after["batch_id"], after["batch_end"]) == ("5-7", "", "")


def test_set_terms_drops_the_batch_in_flight(owner: User) -> None:
    sub = subscription(owner, **IN_FLIGHT)
    Subscription.objects.filter(pk=sub.pk).set_terms(topics=["shop.order.*"])
    sub.refresh_from_db()
    assert (sub.topics, sub.batch_id, sub.batch_end) == (["shop.order.*"], "", "")


def test_delivered_moves_the_cursor_only_while_its_batch_is_in_flight(owner: User) -> None:
    sub = subscription(owner, **FAILED, **IN_FLIGHT)
    now = timezone.now()
    # a replay came first: the attempt of the batch it dropped changes nothing
    assert Subscription.objects.filter(pk=sub.pk, batch_id="b0").delivered(Position(9, 9), now) == 0
    assert state(sub)["failures"] == 3
    Subscription.objects.filter(pk=sub.pk, batch_id="b1").delivered(Position(9, 9), now)
    sub.refresh_from_db()
    assert (sub.cursor, sub.batch_id, sub.batch_end, sub.failures) == ("9-9", "", "", 0)
    assert (sub.last_error, sub.next_attempt, sub.last_delivered) == ("", None, now)


def test_record_leaves_a_subscription_replayed_meanwhile_alone(owner: User) -> None:
    sub = subscription(owner, **IN_FLIGHT)
    batch = delivery.Batch("b1", ["{}"], Position(1, 1), Position(9, 9))
    Subscription.objects.filter(pk=sub.pk).replay(START)  # while the batch was being sent
    attempt = delivery.Attempt(200, "", timedelta(0))
    delivery.record(sub, batch, attempt)
    assert (state(sub)["cursor"], state(sub)["batch_id"]) == ("0-0", "")


def test_record_of_a_2xx_is_one_statement_that_puts_the_batch_read_ahead_in_flight(
    owner: User,
) -> None:
    sub = subscription(owner, **IN_FLIGHT)
    sub = Subscription.objects.select_related("owner").get(pk=sub.pk)  # as delivery loads it
    batch = delivery.Batch("b1", ["{}"], Position(1, 1), Position(9, 9))
    then = delivery.Batch("b2", ["{}"], Position(10, 1), Position(12, 3))
    attempt = delivery.Attempt(200, "", timedelta(seconds=0.5), request_headers={"a": "1"})
    with CaptureQueriesContext(connection) as queries:
        delivery.record(sub, batch, attempt, then=then)
    assert len(queries) == 1  # no BEGIN, no second statement, no COMMIT
    assert (state(sub)["cursor"], state(sub)["batch_id"]) == ("9-9", "b2")
    assert (sub.cursor, sub.batch_id, sub.batch_end) == ("9-9", "b2", "12-3")
    logged = Delivery.objects.get(subscription=sub)
    assert (logged.batch_id, logged.first, logged.last, logged.count) == ("b1", "1-1", "9-9", 1)
    assert (logged.status_code, logged.request_headers) == (200, {"a": "1"})
    assert logged.duration == timedelta(seconds=0.5)


def test_record_of_a_2xx_after_new_terms_moves_the_cursor_but_not_the_batch_read_ahead(
    owner: User,
) -> None:
    sub = subscription(owner, **IN_FLIGHT)
    sub.refresh_from_db()
    Subscription.objects.filter(pk=sub.pk).update(updated=timezone.now())  # a PUT meanwhile
    Subscription.objects.filter(pk=sub.pk).update(**IN_FLIGHT)  # that kept the batch
    batch = delivery.Batch("b1", ["{}"], Position(1, 1), Position(9, 9))
    then = delivery.Batch("b2", ["{}"], Position(10, 1), Position(12, 3))
    delivery.record(sub, batch, delivery.Attempt(200, "", timedelta(0)), then=then)
    assert (state(sub)["cursor"], state(sub)["batch_id"]) == ("9-9", "")
    assert sub.batch_id == "b1"  # the instance is not told: the caller reloads


def test_instance_methods_change_the_instance_until_saved(owner: User) -> None:
    sub = subscription(owner, **FAILED, **IN_FLIGHT)
    sub.drop_batch()
    sub.clear_failures()
    assert (sub.batch_id, sub.batch_end, sub.failures, sub.last_error) == ("", "", 0, "")
    assert state(sub)["batch_id"] == "b1" and state(sub)["failures"] == 3  # not saved yet
    sub.save()
    assert (state(sub)["batch_id"], state(sub)["failures"]) == ("", 0)


def receive(changes: list[dict[str, Any]]) -> None:
    """A local subscriber."""


def test_receivers_sync_writes_the_local_prefix_and_drops_the_batch_on_new_terms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_subscribers, "_registered", {})
    local_subscribers.on("shop.order.*", name="orders")(receive)
    local_subscribers.sync()
    receiver = Subscription.objects.get(owner=None, name="orders")
    assert receiver.target.startswith(LOCAL_PREFIX) and receiver.is_local
    Subscription.objects.filter(pk=receiver.pk).update(**IN_FLIGHT)
    local_subscribers.on("shop.customer.*", name="orders")(receive)
    local_subscribers.sync()
    receiver.refresh_from_db()
    assert (receiver.topics, receiver.batch_id, receiver.batch_end) == (["shop.customer.*"], "", "")


# Lag: a count of what delivery would send, capped, building no change JSON without a filter.


@contextmanager
def queries() -> Iterator[list[str]]:
    """The SQL run inside the block."""
    seen: list[str] = []

    def remember(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        seen.append(sql)
        return execute(sql, *args)

    with connection.execute_wrapper(remember):
        yield seen


def changes(owner: User) -> Subscription:
    """A subscription from the present, then 3 customers, 2 orders and 1 invoice event."""
    sub = subscription(owner)
    customer = Customer.objects.create(name="a")
    for name in ("b", "c"):
        Customer.objects.create(name=name)
    for total in (50, 500):
        Order.objects.create(customer=customer, total=total)
    publish("billing.invoice.paid", {"total": 7})
    return sub


def test_lag_counts_every_change_the_owner_may_see_without_building_json(owner: User) -> None:
    sub = changes(owner)
    with queries() as seen:
        assert subscriptions.lag(sub) == 6
    assert not any("pubsubpull_change_json" in sql for sql in seen)
    assert subscriptions.lag(sub) == len(delivery.pending(sub, 100).results)


def test_lag_counts_only_its_topics_and_what_the_owner_may_view(owner: User) -> None:
    sub = changes(owner)
    Subscription.objects.filter(pk=sub.pk).update(topics=["shop.customer.*", "billing.#"])
    sub.refresh_from_db()
    with queries() as seen:
        assert subscriptions.lag(sub) == 4
    assert not any("pubsubpull_change_json" in sql for sql in seen)
    clerk = User.objects.create_user("clerk")
    clerk.user_permissions.add(Permission.objects.get(codename="view_order"))
    theirs = subscription(clerk, "theirs", cursor=sub.cursor, topics=["shop.#", "billing.#"])
    assert subscriptions.lag(theirs) == 2  # orders: no customers, no events (view_change)
    theirs.topics = []
    assert subscriptions.lag(theirs) == 2


def test_lag_with_a_filter_evaluates_it(owner: User) -> None:
    sub = changes(owner)
    sub.filter = "$.new.total > 100"
    with queries() as seen:
        assert subscriptions.lag(sub) == 1  # the 500 order; the invoice's total is 7
    assert any("pubsubpull_change_json" in sql for sql in seen)  # as delivery reads
    sub.filter = "$.new ?? ("  # fails when it runs: no count
    assert subscriptions.lag(sub) is None


def test_lag_is_capped(owner: User, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = changes(owner)
    monkeypatch.setattr(subscriptions, "LAG_CAP", 4)
    assert subscriptions.lag(sub) == 4
    sub.topics = ["shop.customer.*", "billing.#"]
    assert subscriptions.lag(sub) == 4
    sub.topics = ["shop.customer.*"]
    assert subscriptions.lag(sub) == 3
    sub.topics, sub.filter = [], '$.op == "insert"'
    assert subscriptions.lag(sub) == 4


def test_lag_is_none_when_counting_its_topics_takes_too_long(owner: User, settings: Any) -> None:
    sub = changes(owner)
    sub.topics = ["shop.customer.*"]
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "FILTER_TIMEOUT": 0.2}
    other = raw_connection()
    try:  # the count waits for this lock longer than FILTER_TIMEOUT
        other.execute("BEGIN")
        other.execute("LOCK TABLE pubsubpull_change IN ACCESS EXCLUSIVE MODE")
        assert subscriptions.lag(sub) is None
    finally:
        other.close()
    assert subscriptions.lag(sub) == 3
