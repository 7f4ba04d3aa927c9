"""Subscriptions over HTTP and delivery by a real Procrastinate worker to a loopback receiver."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db import connections as db_connections
from django.test import Client, override_settings
from pytest_httpserver import HTTPServer

import pubsubpull
from pubsubpull import local_subscribers, tasks
from pubsubpull import worker as worker_process
from pubsubpull.events import InvalidEvent
from pubsubpull.models import Delivery, Subscription
from pubsubpull.webhooks import generate_secret
from test_project.shop.models import Customer, Order
from tests.delivery_helpers import Receiver, drain, put, wake
from tests.helpers import backend_alive, raw_connection, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
FAST_RETRIES = {
    "TRACK": {"auth.user": {"exclude": ["password"]}},
    "ALLOWED_TARGETS": ["http://localhost:", "http://127.0.0.1:"],
    "EVENTS": ["billing.invoice"],
    "RETRY_SCHEDULE": [0.01, 0.02, 0.04, 0.05],  # failing at the 5th failure in a row
}


def hook(httpserver: HTTPServer, receiver: Receiver, path: str = "/hook") -> str:
    httpserver.expect_request(path, method="PUT").respond_with_handler(receiver)
    return str(httpserver.url_for(path))


def names(changes: list[dict[str, Any]]) -> list[str]:
    return [(c["new"] or c["old"])["name"] for c in changes]


def test_subscribe_write_receive_in_order_signed(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver()
    secret = generate_secret()
    created = put(
        api,
        "customers",
        {"target": hook(httpserver, receiver), "topics": ["shop.customer.*"], "secret": secret},
        status=201,
    )
    assert created["status"] == "active" and created["signed"] is True
    assert "secret" not in created and secret not in json.dumps(created)

    for i in range(5):
        Customer.objects.create(name=f"c{i}")
    Customer.objects.filter(name="c0").update(name="c0-renamed")
    drain(lambda: len(receiver.changes()) >= 6)

    changes = receiver.changes()
    assert names(changes) == ["c0", "c1", "c2", "c3", "c4", "c0-renamed"]
    positions = [tuple(map(int, c["id"].split("-"))) for c in changes]
    assert positions == sorted(positions)
    first = receiver.requests[0]
    assert first.payload["subscription"] == "customers"
    standardwebhooks.Webhook(secret).verify(first.body, first.headers)  # raises if bad

    state = api.get("/pubsubpull/subscriptions/customers/").json()
    cursor = tuple(map(int, state["cursor"].split("-")))
    assert cursor >= positions[-1] and state["lag"] == 0  # caught up: may be at the horizon
    assert state["last_error"] is None and state["failures"] == 0


def test_topics_and_filter_select_exactly_the_matching_changes(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    put(
        api,
        "big-orders",
        {
            "target": hook(httpserver, receiver),
            "topics": ["shop.order.*"],
            "filter": "$.new.total > 100",
        },
        status=201,
    )
    customer = Customer.objects.create(name="buyer")
    for total in ("50", "150", "99.99", "200"):
        Order.objects.create(customer=customer, total=Decimal(total))
    Order.objects.filter(total=Decimal("50")).update(total=Decimal("500"))
    Customer.objects.create(name="another")
    drain(lambda: len(receiver.changes()) >= 3)
    time.sleep(0.2)
    drain(lambda: True)
    got = [(c["topic"], c["new"]["total"]) for c in receiver.changes()]
    assert got == [
        ("shop.order.insert", 150),
        ("shop.order.insert", 200),
        ("shop.order.update", 500),
    ]


@override_settings(PUBSUBPULL=FAST_RETRIES)
def test_receiver_failing_three_times_gets_everything_in_order_with_the_same_id(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver(statuses=[500, 500, 500])
    put(api, "retry", {"target": hook(httpserver, receiver), "topics": ["shop.#"]}, status=201)
    for i in range(3):
        Customer.objects.create(name=f"r{i}")
    drain(lambda: len(receiver.requests) >= 4)
    first, *retries = receiver.requests[:4]
    assert {r.headers["Webhook-Id"] for r in retries} == {first.headers["Webhook-Id"]}
    assert {r.body for r in retries} == {first.body}
    assert names(receiver.requests[3].changes) == ["r0", "r1", "r2"]

    attempts = list(Delivery.objects.order_by("id").values_list("status_code", "error"))
    assert [code for code, _ in attempts] == [500, 500, 500, 204]
    assert attempts[0][1].startswith("HTTP 500")
    subscription = Subscription.objects.get(name="retry")
    assert subscription.failures == 0 and subscription.last_error == ""


def test_410_gone_disables_at_once(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver(statuses=[410])
    put(api, "gone", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: Subscription.objects.get(name="gone").status == "disabled")
    Customer.objects.create(name="y")
    drain(lambda: True)
    assert len(receiver.requests) == 1
    assert "410" in api.get("/pubsubpull/subscriptions/gone/").json()["last_error"]


@override_settings(PUBSUBPULL=FAST_RETRIES)
def test_schedule_used_up_then_failing_until_resumed(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver(statuses=[503] * 5)
    put(api, "flaky", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="late")
    drain(lambda: Subscription.objects.get(name="flaky").status == "failing")
    assert len(receiver.requests) == 5
    state = put(api, "flaky", {"target": hook(httpserver, receiver), "status": "active"}, 200)
    assert state["failures"] == 0 and state["status"] == "active"
    drain(lambda: len(receiver.requests) == 6)
    assert names(receiver.requests[-1].changes) == ["late"]


@override_settings(PUBSUBPULL={**FAST_RETRIES, "RETRY_SCHEDULE": [30.0] * 4})
def test_one_dead_target_does_not_delay_another(api: Client, httpserver: HTTPServer) -> None:
    healthy = Receiver()
    put(api, "dead", {"target": "http://127.0.0.1:9/closed"}, status=201)  # discard port
    put(api, "alive", {"target": hook(httpserver, healthy)}, status=201)

    def received(count: int) -> Callable[[], bool]:
        return lambda: len(healthy.changes()) == count

    for i in range(3):
        Customer.objects.create(name=f"a{i}")
        drain(received(i + 1), timeout=10)
    dead = Subscription.objects.get(name="dead")
    assert dead.failures == 1 and "Connection" in dead.last_error  # waiting 30 s to retry
    assert names(healthy.changes()) == ["a0", "a1", "a2"]


def test_pause_resume_and_replay(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver()
    target = hook(httpserver, receiver)
    put(api, "p", {"target": target}, status=201)
    Customer.objects.create(name="one")
    drain(lambda: len(receiver.changes()) == 1)

    put(api, "p", {"target": target, "status": "paused"}, status=200)
    Customer.objects.create(name="two")
    drain(lambda: True)
    assert len(receiver.changes()) == 1
    assert api.get("/pubsubpull/subscriptions/p/").json()["lag"] == 1

    put(api, "p", {"target": target, "status": "active"}, status=200)
    drain(lambda: len(receiver.changes()) == 2)
    assert names(receiver.changes()) == ["one", "two"]

    first_id = receiver.changes()[0]["id"]
    put(api, "p", {"target": target, "cursor": first_id}, status=200)  # replay after "one"
    drain(lambda: len(receiver.changes()) == 3)
    assert names(receiver.changes()) == ["one", "two", "two"]


def test_worker_killed_mid_delivery_loses_nothing(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver(delay=3.0)  # the first batch hangs while the worker is killed
    put(api, "k", {"target": hook(httpserver, receiver), "batch_size": 2}, status=201)
    for i in range(5):
        Customer.objects.create(name=f"k{i}")
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "procrastinate", "worker", "--queues", "pubsubpull"],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wake()
    try:
        deadline = time.monotonic() + 30
        while not receiver.requests:
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    in_flight = receiver.requests[0].headers["Webhook-Id"]
    assert async_to_sync(tasks.recover_stalled)(0) >= 1  # what the periodic task does
    drain(lambda: {c["new"]["name"] for c in receiver.changes()} >= {f"k{i}" for i in range(5)})

    by_id: dict[str, int] = {}
    for request in receiver.requests:
        by_id[request.headers["Webhook-Id"]] = by_id.get(request.headers["Webhook-Id"], 0) + 1
    assert {i for i, count in by_id.items() if count > 1} <= {in_flight}  # only it twice
    delivered = [c["new"]["name"] for r in receiver.requests[1:] for c in r.changes]
    assert delivered == ["k0", "k1", "k2", "k3", "k4"]  # in order after the resend


def test_writes_queue_no_jobs(api: Client, httpserver: HTTPServer) -> None:
    """Nothing inserts job rows from a writer's transaction (a queued row made concurrent
    writers wait on each other): workers watch the log's tail instead."""
    put(api, "w", {"target": hook(httpserver, Receiver())}, status=201)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")
    Customer.objects.create(name="a")
    with transaction.atomic():
        Customer.objects.create(name="b")
        Order.objects.create(customer=Customer.objects.create(name="c"), total=Decimal(1))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM procrastinate_jobs")
        assert cursor.fetchone()[0] == 0


def test_a_waiting_worker_is_woken_by_commits(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver()
    put(api, "live", {"target": hook(httpserver, receiver)}, status=201)
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "procrastinate", "worker", "--queues", "pubsubpull"],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:  # no job queued: the worker's process watches the log from its start
        Customer.objects.create(name="first")
        wait_for(lambda: names(receiver.changes()) == ["first"], worker)
        with connection.cursor() as cursor:  # no job waits: the worker's watcher must wake
            cursor.execute("DELETE FROM procrastinate_jobs WHERE status = 'todo'")
        for name in ("second", "third"):
            Customer.objects.create(name=name)
        wait_for(lambda: names(receiver.changes()) == ["first", "second", "third"], worker)
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0


def test_jobs_a_worker_queues_itself_run_without_notify_or_polling(
    api: Client, httpserver: HTTPServer
) -> None:
    """The dispatch its watcher queues and the delivery jobs its rounds hand a backlog to
    run at once: the worker's process nudges its worker (Procrastinate can lose the NOTIFY
    of a job queued while it fetches, and then waits for its next poll). Here it hears no
    NOTIFY at all and polls once an hour: only the nudges can move anything."""
    receiver = Receiver()
    put(api, "nudged", {"target": hook(httpserver, receiver), "batch_size": 2}, status=201)
    # the PUT queued a job: the worker runs it first, and is nudged from then on
    worker = subprocess.Popen(
        [
            *[sys.executable, "manage.py", "procrastinate", "worker", "--queues", "pubsubpull"],
            *["--no-listen-notify", "--fetch-job-polling-interval", "3600"],
        ],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: not _jobs_waiting(), worker)
        with transaction.atomic():  # a backlog of 3 batches: a round, then a job of its own
            for i in range(5):
                Customer.objects.create(name=f"n{i}")
        wait_for(lambda: names(receiver.changes()) == [f"n{i}" for i in range(5)], worker)
        Customer.objects.create(name="later")  # the watcher's next dispatch
        wait_for(lambda: names(receiver.changes())[5:] == ["later"], worker)
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0


def _jobs_waiting() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'")
        return int(cursor.fetchone()[0])


@pytest.mark.parametrize(
    ("project", "worker", "kept"),
    [(0, 300, 300), (0, 0, 0), (60, 300, 60), (None, 300, None)],
)
def test_a_worker_process_keeps_its_connections_between_jobs(
    project: int | None, worker: int, kept: int | None
) -> None:
    settings = db_connections.settings["default"]
    before = settings["CONN_MAX_AGE"]
    settings["CONN_MAX_AGE"] = project
    try:
        with override_settings(PUBSUBPULL={"WORKER_CONN_MAX_AGE": worker}):
            worker_process.keep_connections()
        assert settings["CONN_MAX_AGE"] == kept  # the project's own choice stays
        assert db_connections["default"].settings_dict["CONN_MAX_AGE"] == kept  # same dict
    finally:
        settings["CONN_MAX_AGE"] = before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["manage.py", "procrastinate", "worker"], True),
        (["manage.py", "procrastinate", "--verbose", "worker", "--concurrency", "4"], True),
        (["manage.py", "procrastinate", "worker", "--one-shot"], False),
        (["manage.py", "procrastinate", "defer", "x"], False),
        (["manage.py", "runserver"], False),
        (["pytest"], False),
    ],
)
def test_worker_processes_are_recognised(argv: list[str], expected: bool) -> None:
    assert worker_process.is_worker_command(argv) is expected


def wait_for(
    condition: Any, worker: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker is None or worker.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sweep_delivers_when_the_wake_up_was_lost(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver()
    put(api, "s", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="swept")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")  # the wake-up is lost
    tasks.dispatch(timestamp=int(time.time()))  # what the periodic sweep runs
    drain(lambda: names(receiver.changes()) == ["swept"])


# -- local subscribers and custom events ------------------------------------------------

seen: list[list[dict[str, Any]]] = []
broken_calls: list[int] = []


def remember(changes: list[dict[str, Any]]) -> None:
    seen.append(changes)


def broken(changes: list[dict[str, Any]]) -> None:
    broken_calls.append(len(changes))
    raise RuntimeError("receiver bug")


@override_settings(PUBSUBPULL=FAST_RETRIES)
def test_local_receivers_are_isolated_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_subscribers, "_registered", {})
    seen.clear()
    broken_calls.clear()
    pubsubpull.on("shop.customer.insert", filter="$.new.active == true")(remember)
    pubsubpull.on("shop.#")(broken)
    local_subscribers.sync()
    assert set(Subscription.objects.values_list("target", flat=True)) == {
        "python:tests.test_delivery.remember",
        "python:tests.test_delivery.broken",
    }
    Customer.objects.create(name="local", active=True)
    Customer.objects.create(name="inactive", active=False)
    drain(lambda: len(broken_calls) >= 3 and bool(seen))
    assert [names(batch) for batch in seen] == [["local"]]
    failing = Subscription.objects.get(target="python:tests.test_delivery.broken")
    assert "RuntimeError: receiver bug" in failing.last_error


def test_publish_is_in_the_callers_transaction_and_delivered(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    put(api, "billing", {"target": hook(httpserver, receiver), "topics": ["billing.#"]}, 201)
    with pytest.raises(RuntimeError), transaction.atomic():
        pubsubpull.publish("billing.invoice.paid", {"invoice": 1})
        raise RuntimeError("rolled back")
    with transaction.atomic():
        Customer.objects.create(name="payer")
        pubsubpull.publish("billing.invoice.paid", {"invoice": 2, "amount": "9.50"})
    drain(lambda: bool(receiver.changes()))
    (event,) = receiver.changes()
    assert (event["topic"], event["model"], event["op"]) == (
        "billing.invoice.paid",
        "billing.invoice",
        "paid",
    )
    assert event["new"] == {"invoice": 2, "amount": "9.50"}
    pulled = api.get("/pubsubpull/changes/?topics=billing.%23").json()["results"]
    assert [c["new"] for c in pulled] == [{"invoice": 2, "amount": "9.50"}]


def test_publish_refuses_bad_topics() -> None:
    with pytest.raises(InvalidEvent, match="collide"):
        pubsubpull.publish("shop.customer.paid", {})
    with pytest.raises(InvalidEvent, match="PUBSUBPULL\\['EVENTS'\\]"):
        pubsubpull.publish("crm.lead.won", {})
    with pytest.raises(InvalidEvent, match="label"):
        pubsubpull.publish("paid", {})
    with pytest.raises(InvalidEvent, match="JSON"):
        pubsubpull.publish("billing.invoice.paid", {"x": object()})


# -- the subscription API ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "target"),
        ({"target": "http://10.0.0.1/hook"}, "target"),
        ({"target": "https://127.0.0.1/hook"}, "target"),
        ({"target": "http://169.254.169.254/latest/meta-data"}, "target"),
        ({"target": "https://[::1]/hook"}, "target"),
        ({"target": "python:os.system"}, "target"),
        ({"target": "http://localhost:8001/x", "topics": ["shop.nothing.*"]}, "topics"),
        ({"target": "http://localhost:8001/x", "topics": "shop.#"}, "topics"),
        ({"target": "http://localhost:8001/x", "topics": ["shop..x"]}, "topics"),
        ({"target": "http://localhost:8001/x", "filter": "$.new.total >"}, "filter"),
        ({"target": "http://localhost:8001/x", "batch_size": 0}, "batch_size"),
        ({"target": "http://localhost:8001/x", "batch_size": 1001}, "batch_size"),
        ({"target": "http://localhost:8001/x", "batch_size": "10"}, "batch_size"),
        ({"target": "http://localhost:8001/x", "secret": "not base64!"}, "secret"),
        ({"target": "http://localhost:8001/x", "status": "failing"}, "status"),
        ({"target": "http://localhost:8001/x", "cursor": "yesterday"}, "cursor"),
        ({"target": "http://localhost:8001/x", "colour": "red"}, "colour"),
    ],
)
def test_invalid_subscriptions_are_400_with_field_errors(
    api: Client, body: dict[str, Any], field: str
) -> None:
    answer = put(api, "bad", body, status=400)
    assert answer["error"] == "invalid_subscription"
    assert field in answer["fields"] and answer["fields"][field][0]
    assert not Subscription.objects.exists()


def test_body_must_be_json_and_names_valid(api: Client) -> None:
    response = api.put("/pubsubpull/subscriptions/x/", b"{nope", "application/json")
    assert response.status_code == 400 and response.json()["error"] == "invalid_json"
    assert put(api, "x", [1, 2], status=400)["fields"]["body"]
    assert api.get("/pubsubpull/subscriptions/bad%20name/").status_code == 404


def test_secrets_never_shown_and_owners_isolated(
    api: Client, owner: User, httpserver: HTTPServer
) -> None:
    secret = generate_secret()
    put(api, "mine", {"target": hook(httpserver, Receiver()), "secret": secret}, status=201)
    stored = Subscription.objects.get()
    assert secret not in stored.secret  # encrypted at rest
    admin = "/admin/pubsubpull/subscription/"
    for url in (
        "/pubsubpull/subscriptions/",
        "/pubsubpull/subscriptions/mine/",
        admin,
        f"{admin}{stored.pk}/change/",
    ):
        content = api.get(url).content.decode()
        assert secret not in content and stored.secret not in content, url
    listed = api.get("/pubsubpull/subscriptions/").json()["results"]
    assert [s["name"] for s in listed] == ["mine"]

    other = Client()
    other.force_login(User.objects.create_user("other", password="other-password"))
    assert other.get("/pubsubpull/subscriptions/").json() == {"results": []}
    assert other.get("/pubsubpull/subscriptions/mine/").status_code == 404
    assert other.delete("/pubsubpull/subscriptions/mine/").status_code == 404
    assert api.delete("/pubsubpull/subscriptions/mine/").status_code == 204
    assert not Subscription.objects.exists()


def test_session_writes_need_csrf_token_writes_do_not(owner: User) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    body = json.dumps({"target": "http://localhost:8001/x"})
    refused = browser.put("/pubsubpull/subscriptions/c/", body, "application/json")
    assert refused.status_code == 403 and refused.json()["error"] == "csrf_failed"
    _, token = __import__("pubsubpull.auth", fromlist=["create_token"]).create_token(owner)
    allowed = Client(enforce_csrf_checks=True).put(
        "/pubsubpull/subscriptions/c/",
        body,
        "application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert allowed.status_code == 201


def test_admin_actions_pause_resume_replay(api: Client, httpserver: HTTPServer) -> None:
    put(api, "adm", {"target": hook(httpserver, Receiver())}, status=201)
    subscription = Subscription.objects.get()
    url = "/admin/pubsubpull/subscription/"
    actions: list[tuple[str, Callable[[Subscription], bool]]] = [
        ("pause", lambda s: s.status == "paused"),
        ("resume", lambda s: s.status == "active" and s.failures == 0),
        ("replay_from_start", lambda s: s.cursor == "0-0"),
    ]
    for action, check in actions:
        response = api.post(url, {"action": action, "_selected_action": [subscription.pk]})
        assert response.status_code == 302
        subscription.refresh_from_db()
        assert check(subscription), action
    page = api.get(url).content.decode()
    assert "adm" in page and "Lag" in page


def test_one_sender_per_subscription_until_its_connection_dies(
    api: Client, httpserver: HTTPServer
) -> None:
    from pubsubpull import delivery

    put(api, "claims", {"target": hook(httpserver, Receiver())}, status=201)
    subscription = Subscription.objects.get(name="claims")
    Customer.objects.create(name="waiting")
    # visible once no other transaction (autovacuum's analyze, say) holds the horizon
    wait_for(lambda: delivery.due_subscriptions() == [subscription.pk])
    other_worker = raw_connection()
    other_pid = other_worker.info.backend_pid
    try:
        with delivery.claimed(subscription.pk) as first:
            assert first
            row = other_worker.execute(
                "SELECT pg_try_advisory_lock(%s, %s::int)", [delivery.CLAIMS, subscription.pk]
            ).fetchone()
            assert row == (False,)  # a second sender is refused
            assert delivery.due_subscriptions() == []  # dispatch leaves it to its sender
        other_worker.execute(
            "SELECT pg_advisory_lock(%s, %s::int)", [delivery.CLAIMS, subscription.pk]
        )
        with delivery.claimed(subscription.pk) as second:
            assert not second
    finally:
        other_worker.close()  # the other worker dies: its claim goes with its connection
    # the server ends the backend (and frees its locks) after the client has closed
    wait_for(lambda: not backend_alive(other_pid))
    with delivery.claimed(subscription.pk) as third:
        assert third
    assert delivery.due_subscriptions() == [subscription.pk]
