"""Delivery rounds: the new changes of many caught-up subscriptions in one round, with one
page read per group of subscriptions that read the same, their batches sent at once.

The round is called here directly (a dispatch and a delivery job call it the same way),
against a real loopback receiver and real Procrastinate job rows.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections, transaction
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pubsubpull import delivery, reads, rounds, tasks
from pubsubpull.models import Delivery, Subscription
from pubsubpull.positions import Position
from test_project.shop.models import Customer, Order
from tests.delivery_helpers import Receiver, put

pytestmark = pytest.mark.django_db(transaction=True)
SETTINGS = {
    "ALLOWED_TARGETS": ["http://localhost:", "http://127.0.0.1:"],
    "RETRY_SCHEDULE": [30.0],
}


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    with connection.cursor() as cursor:  # Procrastinate's tables outlive a test's flush
        cursor.execute("DELETE FROM procrastinate_jobs")
    rounds._slow.clear()
    yield
    rounds._slow.clear()


def subscribe(
    api: Client, httpserver: HTTPServer, name: str, receiver: Any, **body: Any
) -> Subscription:
    path = f"/{name}"
    httpserver.expect_request(path, method="PUT").respond_with_handler(receiver)
    put(api, name, {"target": httpserver.url_for(path), **body}, status=201)
    return Subscription.objects.get(name=name)


def waiting_jobs() -> dict[int, dict[str, Any]]:
    """The delivery jobs waiting, by subscription id: their arguments."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT args FROM procrastinate_jobs WHERE task_name = %s AND status = 'todo'",
            [tasks.DELIVER],
        )
        found = [json.loads(args) for (args,) in cursor.fetchall()]  # jsonb comes as text
        return {args["subscription_id"]: args for args in found}


def visible(count: int) -> None:
    """Wait until ``count`` changes are below the horizon (their transactions ended)."""
    labels, events = reads.scope(None)
    deadline = time.monotonic() + 10
    while len(reads.changes_page(labels, Position(0, 0), [], 1000, events=events).results) < count:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def page_reads(queries: CaptureQueriesContext) -> int:
    return sum("pubsubpull_change_json" in q["sql"] for q in queries.captured_queries)


def writing_meanwhile(
    receiver: Receiver, *writes: Callable[[], object]
) -> Callable[[Request], Response]:
    """A handler answering as ``receiver`` that first commits one of ``writes`` for each
    of the first requests: changes written while a round sends."""
    left = list(writes)

    def handler(request: Request) -> Response:
        if left:
            try:
                left.pop(0)()
            finally:
                connections.close_all()  # the server thread's own
        return receiver(request)

    return handler


@override_settings(PUBSUBPULL=SETTINGS)
def test_one_round_delivers_to_every_subscription_with_one_read_per_group(
    api: Client, httpserver: HTTPServer
) -> None:
    customers = [Receiver() for _ in range(5)]
    orders = Receiver()
    cursor = str(reads.now())  # caught up together: one cursor
    subscriptions = [
        subscribe(api, httpserver, f"c{i}", r, topics=["shop.customer.*"], cursor=cursor)
        for i, r in enumerate(customers)
    ]
    subscriptions.append(
        subscribe(api, httpserver, "o", orders, topics=["shop.order.*"], cursor=cursor)
    )
    for i in range(3):
        Customer.objects.create(name=f"n{i}")
    visible(3)

    with CaptureQueriesContext(connection) as queries:
        jobs = rounds.deliver([s.pk for s in subscriptions])

    assert jobs == {}  # all caught up, nothing left to a job
    for receiver in customers:
        assert [c["new"]["name"] for c in receiver.changes()] == ["n0", "n1", "n2"]
        assert len(receiver.requests) == 1
    assert orders.requests == []
    assert page_reads(queries) == 2  # one page per group: the customers', the orders'
    for s in subscriptions[:5]:
        s.refresh_from_db()
        assert s.batch_id == "" and s.failures == 0
        assert s.cursor == customers[0].changes()[-1]["id"]
    assert Delivery.objects.filter(status_code=204).count() == 5
    assert waiting_jobs() == {}  # the PUTs' wake-up jobs were taken over


@override_settings(PUBSUBPULL=SETTINGS)
def test_one_read_serves_a_group_whatever_its_cursors(api: Client, httpserver: HTTPServer) -> None:
    behind, ahead = Receiver(), Receiver()
    cursor = str(reads.now())
    first = subscribe(api, httpserver, "behind", behind, cursor=cursor)
    second = subscribe(api, httpserver, "ahead", ahead, cursor=cursor)
    for i in range(3):
        Customer.objects.create(name=f"n{i}")
    visible(3)
    labels, events = reads.scope(None)
    n0 = reads.changes_page(labels, Position.parse(cursor), [], 1, events=events).results[0]
    Subscription.objects.filter(pk=second.pk).replay(Position.parse(json.loads(n0)["id"]))

    with CaptureQueriesContext(connection) as queries:
        assert rounds.deliver([first.pk, second.pk]) == {}

    assert page_reads(queries) == 1
    assert [c["new"]["name"] for c in behind.changes()] == ["n0", "n1", "n2"]
    assert [c["new"]["name"] for c in ahead.changes()] == ["n1", "n2"]  # after its cursor


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_backlog_is_left_to_a_job_of_its_own(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver()
    subscription = subscribe(api, httpserver, "b", receiver, batch_size=2)
    for i in range(5):
        Customer.objects.create(name=f"n{i}")
    visible(5)

    jobs = rounds.deliver([subscription.pk])

    assert [c["new"]["name"] for c in receiver.changes()] == ["n0", "n1"]
    assert jobs[subscription.pk].alone  # drained pipelined by its job, not by rounds


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_backlog_others_read_too_stays_in_rounds(api: Client, httpserver: HTTPServer) -> None:
    receivers = [Receiver() for _ in range(3)]
    cursor = str(reads.now())
    subscriptions = [
        subscribe(api, httpserver, f"b{i}", r, batch_size=2, cursor=cursor)
        for i, r in enumerate(receivers)
    ]
    for i in range(5):
        Customer.objects.create(name=f"n{i}")
    visible(5)

    with CaptureQueriesContext(connection) as queries:
        jobs = rounds.deliver([s.pk for s in subscriptions])
        assert page_reads(queries) == 1
        assert all(not jobs[s.pk].alone for s in subscriptions)  # for the next round
        more = rounds.deliver([s.pk for s in subscriptions])
        assert page_reads(queries) == 2  # one read for all three again, not one each

    assert all(not more[s.pk].alone for s in subscriptions)
    for receiver in receivers:
        assert [c["new"]["name"] for c in receiver.changes()] == ["n0", "n1", "n2", "n3"]
    assert rounds.deliver([s.pk for s in subscriptions]) == {}  # the last one: caught up
    assert all(len(r.changes()) == 5 for r in receivers)


@override_settings(PUBSUBPULL=SETTINGS)
def test_one_far_behind_holds_no_other_of_its_group_back(
    api: Client, httpserver: HTTPServer
) -> None:
    far, near, close = Receiver(), Receiver(), Receiver()
    cursor = str(reads.now())
    replaying = subscribe(api, httpserver, "far", far, batch_size=2, cursor=cursor)
    for i in range(30):
        Customer.objects.create(name=f"n{i}")
    visible(30)
    labels, events = reads.scope(None)
    customers = reads.changes_page(labels, Position(0, 0), ["shop.customer.*"], 30, events=events)
    ahead = subscribe(
        api, httpserver, "near", near, batch_size=2, cursor=str(customers.positions[28])
    )
    behind_it = subscribe(  # within rounds.SPREAD pages of the replay's page: waits a round
        api, httpserver, "close", close, batch_size=2, cursor=str(customers.positions[2])
    )
    ids = [replaying.pk, ahead.pk, behind_it.pk]

    with CaptureQueriesContext(connection) as queries:
        jobs = rounds.deliver(ids)

    assert [c["new"]["name"] for c in far.changes()] == ["n0", "n1"]
    assert [c["new"]["name"] for c in near.changes()] == ["n29"]  # in the same round
    assert close.changes() == []
    assert page_reads(queries) == 2  # from the replay's cursor, from the near one's
    assert jobs[replaying.pk].alone  # read alone: drained pipelined by a job of its own
    assert not jobs[behind_it.pk].alone  # the next round: one read for it and the replay
    assert ahead.pk not in jobs


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_failing_target_is_recorded_and_retried_alone_the_others_delivered(
    api: Client, httpserver: HTTPServer
) -> None:
    healthy, failing = Receiver(), Receiver(statuses=[500])
    good = subscribe(api, httpserver, "good", healthy)
    bad = subscribe(api, httpserver, "bad", failing)
    Customer.objects.create(name="n0")
    visible(1)

    jobs = rounds.deliver([good.pk, bad.pk])

    assert len(healthy.changes()) == 1 and len(failing.requests) == 1
    bad.refresh_from_db()
    assert bad.failures == 1 and bad.batch_id  # the batch stays in flight for its retry
    assert jobs[bad.pk].alone and jobs[bad.pk].at == bad.next_attempt
    assert good.pk not in jobs
    assert Delivery.objects.get(subscription=bad).status_code == 500

    # its retry is a job's: a round leaves a subscription with failures to it
    Subscription.objects.filter(pk=bad.pk).update(next_attempt=None)
    assert rounds.deliver([bad.pk])[bad.pk].alone
    assert len(failing.requests) == 1


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_subscription_another_sender_holds_is_left_to_it(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    subscription = subscribe(api, httpserver, "held", receiver)
    Customer.objects.create(name="n0")
    visible(1)
    held, release = threading.Event(), threading.Event()

    def sender() -> None:
        try:
            with delivery.claimed(subscription.pk) as claimed:
                assert claimed
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        assert held.wait(10)
        assert rounds.deliver([subscription.pk]) == {}  # its sender looks again after
        assert receiver.requests == []
    finally:
        release.set()
        thread.join()


@override_settings(PUBSUBPULL=SETTINGS)
def test_waiting_jobs_are_taken_over_but_not_those_queued_alone(
    api: Client, httpserver: HTTPServer
) -> None:
    shared, alone = Receiver(), Receiver()
    taken = subscribe(api, httpserver, "taken", shared)
    kept = subscribe(api, httpserver, "kept", alone)
    rounds.deliver([])  # the PUTs' jobs
    Customer.objects.create(name="n0")
    visible(1)
    assert tasks.defer_delivery(taken.pk)
    assert tasks.defer_delivery(kept.pk, alone=True)

    rounds.deliver([])  # as a dispatch with nothing new, or another job's round

    assert len(shared.changes()) == 1 and alone.requests == []
    assert waiting_jobs() == {kept.pk: {"subscription_id": kept.pk, "alone": True}}


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_subscription_paused_after_its_read_is_not_sent(
    api: Client, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused, other = Receiver(), Receiver()
    first = subscribe(api, httpserver, "first", paused)
    second = subscribe(api, httpserver, "second", other)
    Customer.objects.create(name="n0")
    visible(1)
    read = rounds._read

    def read_then_pause(*args: Any) -> Any:
        batches = read(*args)
        Subscription.objects.filter(pk=first.pk).pause()
        return batches

    monkeypatch.setattr(rounds, "_read", read_then_pause)
    jobs = rounds.deliver([first.pk, second.pk])

    assert paused.requests == [] and len(other.requests) == 1
    first.refresh_from_db()
    assert first.batch_id == "" and first.status == "paused"
    assert jobs[first.pk].alone  # its job finds it paused and does nothing


@override_settings(PUBSUBPULL=SETTINGS)
def test_changes_written_during_a_round_get_a_job_the_next_round_takes_over(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    write_meanwhile = writing_meanwhile(
        receiver,
        lambda: Order.objects.create(customer=Customer.objects.create(name="late"), total=1),
    )
    subscription = subscribe(api, httpserver, "meanwhile", write_meanwhile)
    Customer.objects.create(name="n0")
    visible(1)

    jobs = rounds.deliver([subscription.pk])

    assert [c["new"].get("name") for c in receiver.changes()] == ["n0"]
    assert not jobs[subscription.pk].alone  # the changes written meanwhile: next round's
    tasks._hand_off(jobs)
    rounds.deliver([])
    assert [c["topic"] for c in receiver.changes()] == [
        "shop.customer.insert",
        "shop.customer.insert",
        "shop.order.insert",
    ]


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_delivery_job_goes_on_in_rounds_while_changes_come_meanwhile(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    write_meanwhile = writing_meanwhile(  # each of the first two sends: a change meanwhile
        receiver,
        lambda: Customer.objects.create(name="late0"),
        lambda: Customer.objects.create(name="late1"),
    )
    subscription = subscribe(api, httpserver, "rounds", write_meanwhile)
    connection.cursor().execute("DELETE FROM procrastinate_jobs")  # the PUT's job
    Customer.objects.create(name="n0")
    visible(1)

    tasks.deliver(subscription.pk)  # a job queued without "alone": three rounds

    assert [c["new"]["name"] for c in receiver.changes()] == ["n0", "late0", "late1"]
    assert [len(r.changes) for r in receiver.requests] == [1, 1, 1]
    assert waiting_jobs() == {}  # none handed over to another job


@override_settings(PUBSUBPULL=SETTINGS)
def test_rounds_give_way_to_a_job_queued_alone(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver()
    other = subscribe(api, httpserver, "backlog", Receiver(), status="paused")

    write_meanwhile = writing_meanwhile(receiver, lambda: Customer.objects.create(name="late"))
    subscription = subscribe(api, httpserver, "rounds", write_meanwhile)
    connection.cursor().execute("DELETE FROM procrastinate_jobs")
    tasks.defer_delivery(other.pk, alone=True)  # waits for a worker slot
    Customer.objects.create(name="n0")
    visible(1)

    tasks.deliver(subscription.pk)

    assert [c["new"]["name"] for c in receiver.changes()] == ["n0"]
    assert waiting_jobs() == {
        other.pk: {"subscription_id": other.pk, "alone": True},
        subscription.pk: {"subscription_id": subscription.pk},
    }


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_job_that_stops_with_a_backlog_leaves_it_to_a_round_and_a_retry_alone(
    api: Client, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "JOB_SECONDS", 0.0)  # each job stops after one batch
    receiver = Receiver(statuses=[204, 500])
    subscription = subscribe(api, httpserver, "b", receiver, batch_size=2)
    for i in range(5):
        Customer.objects.create(name=f"n{i}")
    visible(5)
    connection.cursor().execute("DELETE FROM procrastinate_jobs")  # the PUT's wake-up

    tasks.deliver(subscription.pk, alone=True)

    assert [c["new"]["name"] for c in receiver.changes()] == ["n0", "n1"]
    # a round reads for it and for others reading the same changes (and sends it back
    # alone when it reads them alone: test_a_backlog_is_left_to_a_job_of_its_own)
    assert waiting_jobs() == {subscription.pk: {"subscription_id": subscription.pk}}

    connection.cursor().execute("DELETE FROM procrastinate_jobs")
    tasks.deliver(subscription.pk, alone=True)  # answered 500: a retry, later

    assert len(receiver.requests) == 2
    assert waiting_jobs() == {subscription.pk: {"subscription_id": subscription.pk, "alone": True}}


def test_the_jobs_a_round_leaves_are_queued_in_one_query_or_one_by_one_if_one_waits(
    owner: User,
) -> None:
    ids = [
        Subscription.objects.create(owner=owner, name=f"s{i}", target="https://example.com/").pk
        for i in range(4)
    ]
    later = timezone.now() + timedelta(minutes=5)
    left = {
        ids[0]: rounds.Handoff(timezone.now(), alone=False),
        ids[1]: rounds.Handoff(timezone.now()),
        ids[2]: rounds.Handoff(later),
    }
    with CaptureQueriesContext(connection) as queries:
        tasks._hand_off(left)
    assert sum("procrastinate_defer_jobs" in q["sql"] for q in queries.captured_queries) == 1
    assert waiting_jobs() == {
        ids[0]: {"subscription_id": ids[0]},
        ids[1]: {"subscription_id": ids[1], "alone": True},
        ids[2]: {"subscription_id": ids[2], "alone": True},
    }
    with connection.cursor() as cursor:
        cursor.execute("SELECT scheduled_at FROM procrastinate_jobs ORDER BY id")
        assert [row[0] for row in cursor.fetchall()] == [None, None, later]

    connection.cursor().execute(
        "DELETE FROM procrastinate_jobs WHERE args->>'subscription_id' <> %s", [str(ids[0])]
    )
    with transaction.atomic():  # a caller's transaction survives the conflict
        tasks._hand_off({i: rounds.Handoff(timezone.now(), alone=False) for i in ids})
    assert waiting_jobs() == {i: {"subscription_id": i} for i in ids}  # none lost


@pytest.fixture
def threaded_server() -> Iterator[HTTPServer]:
    """A loopback server answering requests at the same time (``httpserver``: one by one)."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_slow_target_is_left_to_jobs_for_a_while(
    api: Client,
    httpserver: HTTPServer,
    threaded_server: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rounds, "SLOW_SEND", 0.05)
    slow, fast = Receiver(delay=0.3), Receiver()
    cursor = str(reads.now())
    subscription = subscribe(api, threaded_server, "slow", slow, cursor=cursor)
    other = subscribe(api, httpserver, "fast", fast, cursor=cursor)
    Customer.objects.create(name="n0")
    visible(1)

    assert rounds.deliver([subscription.pk, other.pk]) == {}
    assert len(slow.requests) == 1 and rounds.is_slow(subscription.pk)
    assert not rounds.is_slow(other.pk)
    Customer.objects.create(name="n1")
    visible(2)
    jobs = rounds.deliver([subscription.pk, other.pk])
    assert list(jobs) == [subscription.pk] and jobs[subscription.pk].alone
    assert len(slow.requests) == 1 and len(fast.requests) == 2


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_round_whose_sends_are_all_slow_leaves_none_to_jobs(
    api: Client, threaded_server: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An overloaded worker makes every send of a round slow alike. Left to jobs of their
    # own, each would cost a job and a page read per batch, and overload it more.
    monkeypatch.setattr(rounds, "SLOW_SEND", 0.05)
    receivers = [Receiver(delay=0.2) for _ in range(3)]
    cursor = str(reads.now())
    subscriptions = [
        subscribe(api, threaded_server, f"s{i}", r, cursor=cursor) for i, r in enumerate(receivers)
    ]
    Customer.objects.create(name="n0")
    visible(1)

    assert rounds.deliver([s.pk for s in subscriptions]) == {}
    assert all(len(r.requests) == 1 for r in receivers)
    assert not any(rounds.is_slow(s.pk) for s in subscriptions)


def test_sends_spread_by_an_overloaded_worker_leave_none_to_jobs() -> None:
    # Two worker processes sharing 200 subscriptions: one round's sends took 0.03-0.5 s,
    # no target slow. Against the first quartile, the slowest were left to jobs.
    took = {i: seconds for i, seconds in enumerate([0.03, 0.05, 0.06, 0.07, 0.08, 0.1, 0.3])}
    rounds._remember_slow(took)
    assert not any(rounds.is_slow(i) for i in took)


def test_a_send_that_holds_its_round_back_is_slow() -> None:
    took = {1: 0.03, 2: 0.04, 3: 0.05, 4: 0.04 + rounds.SLOW_SEND + 0.01}
    rounds._remember_slow(took)
    assert [i for i in took if rounds.is_slow(i)] == [4]


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_round_never_sends_a_subscription_the_owner_may_not_see(
    httpserver: HTTPServer, owner: User
) -> None:
    # two owners, the same topics: not one group (what each reads is its owner's)
    from django.contrib.auth.models import Permission

    viewer = User.objects.create_user("viewer")
    viewer.user_permissions.add(*Permission.objects.filter(codename="view_order"))
    both = Client()
    both.force_login(owner)
    orders_only = Client()
    orders_only.force_login(viewer)
    everything, orders = Receiver(), Receiver()
    a = subscribe(both, httpserver, "all", everything, topics=["shop.#"])
    b = subscribe(orders_only, httpserver, "orders", orders, topics=["shop.#"])
    Customer.objects.create(name="n0")
    visible(1)

    rounds.deliver([a.pk, b.pk])

    assert len(everything.changes()) == 1 and orders.requests == []


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_round_lets_go_of_every_claim_whatever_became_of_each(
    api: Client, httpserver: HTTPServer
) -> None:
    # one with a batch, one with nothing to send, one paused, one with a backlog, one
    # failing: none stays claimed by the round's session
    sent, idle, paused, backlog, failing = (Receiver() for _ in range(5))
    failing.statuses = [500]
    subscriptions = [
        subscribe(api, httpserver, "sent", sent, topics=["shop.customer.*"]),
        subscribe(api, httpserver, "idle", idle, topics=["shop.order.*"]),
        subscribe(api, httpserver, "paused", paused, status="paused"),
        subscribe(api, httpserver, "backlog", backlog, batch_size=1),
        subscribe(api, httpserver, "failing", failing),
    ]
    for i in range(2):
        Customer.objects.create(name=f"n{i}")
    visible(2)

    rounds.deliver([s.pk for s in subscriptions])

    assert len(sent.requests) == len(backlog.requests) == len(failing.requests) == 1
    assert idle.requests == paused.requests == []
    assert delivery.claimed_subscriptions() == set()


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_job_taken_over_for_a_subscription_waiting_to_retry_leaves_its_retry_queued(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    subscription = subscribe(api, httpserver, "later", receiver)
    rounds.deliver([])  # the PUT's job
    later = timezone.now() + timedelta(minutes=5)
    Subscription.objects.filter(pk=subscription.pk).update(failures=1, next_attempt=later)
    assert tasks.defer_delivery(subscription.pk)  # a job a round may take over

    tasks._hand_off(rounds.deliver([]))

    assert receiver.requests == []
    assert waiting_jobs() == {subscription.pk: {"subscription_id": subscription.pk, "alone": True}}
    with connection.cursor() as cursor:
        cursor.execute("SELECT scheduled_at FROM procrastinate_jobs WHERE status = 'todo'")
        assert cursor.fetchone()[0] == later


def test_a_database_error_in_a_later_round_loses_no_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import OperationalError

    now = timezone.now()
    results: list[rounds.Jobs | Exception] = [
        {1: rounds.Handoff(now), 2: rounds.Handoff(now, alone=False)},  # a backlog, more
        OperationalError("the database went away"),
    ]

    def deliver(ids: list[int]) -> rounds.Jobs:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(rounds, "deliver", deliver)
    with pytest.raises(OperationalError):
        tasks._in_rounds([1, 2])
    assert waiting_jobs() == {1: {"subscription_id": 1, "alone": True}, 2: {"subscription_id": 2}}
