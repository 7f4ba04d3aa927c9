"""Pipelined delivery: the next page is read while a batch is sent, and goes in flight in
the commit that records the batch before it; the page after it is read meanwhile on another
connection. Still one batch in flight, the cursor moved
only by a 2xx, the same ``webhook-id`` on a retry; a PUT meanwhile stops the pipeline.

The delivery function is called here directly (the worker's job calls it the same way,
with ``more`` saying whether to go on), against a real loopback receiver.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, override_settings
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pubsubpull import delivery
from pubsubpull.models import Delivery, Subscription
from pubsubpull.positions import START, Position
from test_project.shop.models import Customer
from tests.delivery_helpers import Receiver, put

pytestmark = pytest.mark.django_db(transaction=True)
SETTINGS = {
    "ALLOWED_TARGETS": ["http://localhost:", "http://127.0.0.1:"],
    "RETRY_SCHEDULE": [0.01, 0.02],
}


def always() -> bool:
    return True


class Watching(Receiver):
    """A receiver that, on each PUT, notes the subscription's batch in flight and runs
    ``then(n)`` (n: the request's number, from 0) before answering."""

    def __init__(self, then: Callable[[int], None] = lambda n: None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.then = then
        self.in_flight: list[str] = []

    def __call__(self, request: Request) -> Response:
        try:
            subscription = Subscription.objects.get(name="pipe")
            self.in_flight.append(subscription.batch_id)
            self.then(len(self.in_flight) - 1)
        finally:
            connection.close()  # the server thread's own: the test database is dropped later
        return super().__call__(request)


def subscribe(api: Client, httpserver: HTTPServer, receiver: Receiver) -> Subscription:
    httpserver.expect_request("/hook", method="PUT").respond_with_handler(receiver)
    put(
        api,
        "pipe",
        {"target": httpserver.url_for("/hook"), "topics": ["shop.customer.*"], "batch_size": 2},
        status=201,
    )
    return Subscription.objects.get(name="pipe")


def names(receiver: Receiver) -> list[str]:
    return [c["new"]["name"] for c in receiver.changes()]


def ids(receiver: Receiver) -> list[str]:
    return [r.headers["Webhook-Id"] for r in receiver.requests]


@override_settings(PUBSUBPULL=SETTINGS)
def test_one_call_sends_batch_after_batch_each_in_flight_while_sent(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Watching()
    subscription = subscribe(api, httpserver, receiver)
    for i in range(7):
        Customer.objects.create(name=f"c{i}")

    assert delivery.deliver(subscription.pk, always) is not None  # now: more may come

    assert names(receiver) == [f"c{i}" for i in range(7)]
    assert [len(r.changes) for r in receiver.requests] == [2, 2, 2, 1]
    # each batch was in flight (marked before its PUT) while it was sent, the ones read
    # ahead by the commit that recorded the batch before them: one batch in flight
    assert receiver.in_flight == ids(receiver) and len(set(ids(receiver))) == 4
    subscription.refresh_from_db()
    assert subscription.batch_id == "" and subscription.batch_end == ""
    last = Position.parse(receiver.changes()[-1]["id"])
    assert Position.parse(subscription.cursor) >= last
    attempts = Delivery.objects.filter(subscription=subscription).order_by("id")
    assert [(a.batch_id, a.status_code, a.count) for a in attempts] == [
        (batch_id, 204, len(r.changes))
        for batch_id, r in zip(ids(receiver), receiver.requests, strict=True)
    ]


@override_settings(PUBSUBPULL=SETTINGS)
def test_the_page_after_next_is_read_on_another_connection_while_a_batch_is_recorded(
    api: Client, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads_ahead: list[tuple[Position, int, int]] = []  # after, thread, database backend
    second_read = threading.Event()
    read_ahead, record = delivery.read_ahead, delivery.record

    def backend() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    def spy_read(subscription: Subscription, after: Position) -> delivery.Batch | None:
        reads_ahead.append((after, threading.get_ident(), backend()))
        if len(reads_ahead) == 2:
            second_read.set()
        return read_ahead(subscription, after)

    overlapped: list[bool] = []

    def spy_record(*args: Any, **kwargs: Any) -> Any:
        if not overlapped:  # the first batch's record waits for the read of the third
            overlapped.append(second_read.wait(timeout=10))
        return record(*args, **kwargs)

    monkeypatch.setattr(delivery, "read_ahead", spy_read)
    monkeypatch.setattr(delivery, "record", spy_record)
    receiver = Receiver()
    subscription = subscribe(api, httpserver, receiver)
    for i in range(7):
        Customer.objects.create(name=f"c{i}")

    delivery.deliver(subscription.pk, always)

    assert names(receiver) == [f"c{i}" for i in range(7)]  # in order, each once
    assert overlapped == [True]  # read while the first batch was being recorded
    here, connection_here = threading.get_ident(), backend()
    # the page after the first batch is read here, during its send; the pages after the
    # second and third on another thread's connection, during the record before them
    assert [t == here and pid == connection_here for _, t, pid in reads_ahead] == [
        True,
        False,
        False,
    ]
    assert all(t != here and pid != connection_here for _, t, pid in reads_ahead[1:])


@override_settings(PUBSUBPULL=SETTINGS)
def test_without_more_one_batch_per_call(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver()
    subscription = subscribe(api, httpserver, receiver)
    for i in range(5):
        Customer.objects.create(name=f"c{i}")
    delivery.deliver(subscription.pk)
    assert names(receiver) == ["c0", "c1"]
    delivery.deliver(subscription.pk, lambda: False)
    assert names(receiver) == ["c0", "c1", "c2", "c3"]


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_failure_leaves_that_batch_in_flight_and_the_one_read_ahead_unsent(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver(statuses=[204, 500])
    subscription = subscribe(api, httpserver, receiver)
    for i in range(6):
        Customer.objects.create(name=f"c{i}")

    retry = delivery.deliver(subscription.pk, always)

    assert retry is not None  # the retry time
    assert [len(r.changes) for r in receiver.requests] == [2, 2]  # stopped at the failure
    subscription.refresh_from_db()
    failed = receiver.requests[1]
    assert subscription.batch_id == failed.headers["Webhook-Id"]  # in flight, to retry
    assert subscription.failures == 1
    assert Position.parse(subscription.cursor) == Position.parse(receiver.changes()[1]["id"])

    subscription.next_attempt = None
    subscription.save(update_fields=["next_attempt"])
    delivery.deliver(subscription.pk, always)
    resent = receiver.requests[2]
    assert resent.headers["Webhook-Id"] == failed.headers["Webhook-Id"]
    assert resent.body == failed.body  # the same batch, byte for byte
    assert names(receiver) == ["c0", "c1", "c2", "c3", "c2", "c3", "c4", "c5"]


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_replay_during_a_send_stops_the_pipeline(api: Client, httpserver: HTTPServer) -> None:
    def replay(n: int) -> None:
        if n == 0:
            Subscription.objects.filter(name="pipe").replay(START)

    receiver = Watching(replay)
    subscription = subscribe(api, httpserver, receiver)
    for i in range(6):
        Customer.objects.create(name=f"c{i}")

    delivery.deliver(subscription.pk, always)

    assert names(receiver) == ["c0", "c1"]  # the batch read ahead was not put in flight
    subscription.refresh_from_db()
    assert subscription.cursor == str(START) and subscription.batch_id == ""
    delivery.deliver(subscription.pk, always)
    assert names(receiver) == ["c0", "c1"] + [f"c{i}" for i in range(6)]  # from the start


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_pause_during_a_send_stops_after_it_and_resume_goes_on_in_order(
    api: Client, httpserver: HTTPServer, owner: User
) -> None:
    def pause(n: int) -> None:
        if n == 0:
            Subscription.objects.filter(name="pipe").pause()

    receiver = Watching(pause)
    subscription = subscribe(api, httpserver, receiver)
    for i in range(6):
        Customer.objects.create(name=f"c{i}")

    assert delivery.deliver(subscription.pk, always) is None  # paused: nothing to schedule
    assert names(receiver) == ["c0", "c1"]
    subscription.refresh_from_db()
    # the batch sent is recorded; the one read ahead is not put in flight by a paused row
    assert subscription.batch_id == ""
    assert Position.parse(subscription.cursor) == Position.parse(receiver.changes()[1]["id"])

    Subscription.objects.filter(name="pipe").resume()
    delivery.deliver(subscription.pk, always)
    assert names(receiver) == [f"c{i}" for i in range(6)]


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_subscription_saved_during_a_send_goes_on_under_its_new_terms(
    api: Client, httpserver: HTTPServer
) -> None:
    def save(n: int) -> None:
        if n == 0:  # as a PUT does: a new batch size, nothing else
            changed = Subscription.objects.get(name="pipe")
            changed.batch_size = 3
            changed.save()

    receiver = Watching(save)
    subscription = subscribe(api, httpserver, receiver)
    for i in range(6):
        Customer.objects.create(name=f"c{i}")

    delivery.deliver(subscription.pk, always)
    assert names(receiver) == ["c0", "c1"]  # the batch read ahead under the old terms: unsent
    subscription.refresh_from_db()
    assert subscription.batch_id == ""
    delivery.deliver(subscription.pk, always)
    assert names(receiver) == [f"c{i}" for i in range(6)]
    assert [len(r.changes) for r in receiver.requests] == [2, 3, 1]


@pytest.mark.parametrize("interval, seen", [(0.0, 4), (60.0, 6)])
@override_settings(PUBSUBPULL=SETTINGS)
def test_the_owner_is_reloaded_within_the_reload_interval(
    api: Client,
    httpserver: HTTPServer,
    owner: User,
    monkeypatch: pytest.MonkeyPatch,
    interval: float,
    seen: int,
) -> None:
    # the owner's permissions are cached on the instance the pipeline goes on with: a
    # deactivated owner sees nothing more once the subscription is reloaded
    monkeypatch.setattr(delivery, "RELOAD_INTERVAL", interval)

    def deactivate(n: int) -> None:
        if n == 0:
            User.objects.filter(pk=owner.pk).update(is_active=False)

    receiver = Watching(deactivate)
    subscription = subscribe(api, httpserver, receiver)
    for i in range(6):
        Customer.objects.create(name=f"c{i}")

    delivery.deliver(subscription.pk, always)
    # reloaded after the first batch: the second was read ahead while the first was sent
    # (under the old permissions), nothing after it
    assert names(receiver) == [f"c{i}" for i in range(seen)]


@override_settings(PUBSUBPULL=SETTINGS)
def test_only_a_backlog_is_read_ahead(
    api: Client, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads_ahead: list[Position] = []
    read_ahead = delivery.read_ahead

    def spy(subscription: Subscription, after: Position) -> delivery.Batch | None:
        reads_ahead.append(after)
        return read_ahead(subscription, after)

    monkeypatch.setattr(delivery, "read_ahead", spy)
    receiver = Receiver()
    subscription = subscribe(api, httpserver, receiver)
    Customer.objects.create(name="c0")

    # a batch short of batch_size was caught up when read: no page is read during its
    # send, and the job gives other subscriptions their turn before the next one
    delivery.deliver(subscription.pk, always)
    assert names(receiver) == ["c0"] and reads_ahead == []

    for i in range(1, 6):
        Customer.objects.create(name=f"c{i}")
    delivery.deliver(subscription.pk, always)
    assert names(receiver) == [f"c{i}" for i in range(6)]
    # after each full batch (c1 c2, c3 c4); not after the last one (c5)
    assert len(reads_ahead) == 2


@override_settings(PUBSUBPULL=SETTINGS)
@pytest.mark.parametrize(
    "put_meanwhile",
    [
        lambda pk: Subscription.objects.filter(pk=pk).replay(START),
        lambda pk: Subscription.objects.filter(pk=pk).set_terms(topics=["shop.#"]),
    ],
    ids=["replay", "new terms"],
)
def test_a_put_between_the_read_and_the_mark_wins(
    api: Client,
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    put_meanwhile: Callable[[int], None],
) -> None:
    receiver = Receiver()
    subscription = subscribe(api, httpserver, receiver)
    for i in range(2):
        Customer.objects.create(name=f"c{i}")
    delivery.deliver(subscription.pk)
    new_batch = delivery.new_batch

    def read_then_put(s: Subscription, page: Any) -> delivery.Batch:
        batch = new_batch(s, page)
        put_meanwhile(s.pk)  # committed after the page was read from the old state
        return batch

    monkeypatch.setattr(delivery, "new_batch", read_then_put)
    Customer.objects.create(name="c2")
    assert delivery.deliver(subscription.pk) is not None  # "read again now"
    monkeypatch.undo()

    assert names(receiver) == ["c0", "c1"]  # the page read before the PUT was not sent
    subscription.refresh_from_db()
    assert subscription.batch_id == ""
    delivery.deliver(subscription.pk, always)
    expected = ["c0", "c1", "c0", "c1", "c2"] if subscription.cursor == str(START) else None
    assert names(receiver) == (expected or ["c0", "c1", "c2"])


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_retry_cut_short_by_a_smaller_batch_size_skips_nothing(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver(statuses=[500])
    subscription = subscribe(api, httpserver, receiver)
    for i in range(3):
        Customer.objects.create(name=f"c{i}")
    delivery.deliver(subscription.pk)  # c0 c1 in flight, failed
    Subscription.objects.filter(pk=subscription.pk).update(batch_size=1, next_attempt=None)

    delivery.deliver(subscription.pk)  # the retry reads one change of the two
    delivery.deliver(subscription.pk, always)
    delivery.deliver(subscription.pk, always)

    assert names(receiver) == ["c0", "c1", "c0", "c1", "c2"]
    assert receiver.requests[1].headers["Webhook-Id"] == receiver.requests[0].headers["Webhook-Id"]
