"""Operators are told: pubsubpull.subscription.failing/disabled/recovered events in the log
(visible to the owner and staff) and Django signals of the same names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.checks import CheckMessage
from django.db import transaction
from django.dispatch import Signal
from django.test import Client, override_settings
from pytest_httpserver import HTTPServer

import pubsubpull
from pubsubpull import signals, subscription_events
from pubsubpull.checks import check_settings
from pubsubpull.events import InvalidEvent
from pubsubpull.models import Change, Subscription
from test_project.shop.models import Customer
from tests.delivery_helpers import Receiver, drain, put

pytestmark = pytest.mark.django_db(transaction=True)

SETTINGS = {
    "TRACK": {"auth.user": {"exclude": ["password"]}},
    "ALLOWED_TARGETS": ["http://localhost:", "http://127.0.0.1:"],
    "RETRY_SCHEDULE": [0, 0],  # failing at the third failure in a row
}
TOPICS = "/pubsubpull/changes/?topics=pubsubpull.subscription.%2A"


class Heard:
    """The calls of the three subscription signals, as (signal name, subscription, event)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def receiver(self, name: str) -> Any:
        def receive(sender: Any, subscription: Subscription, event: dict[str, Any], **kw: Any):  # type: ignore[no-untyped-def]
            assert sender is Subscription
            self.calls.append((name, subscription.name, event))

        return receive


@pytest.fixture
def heard() -> Iterator[Heard]:
    heard = Heard()
    connected: list[tuple[Signal, Any]] = []
    for name, signal in signals.BY_EVENT.items():
        receiver = heard.receiver(name)
        signal.connect(receiver, weak=False)
        connected.append((signal, receiver))
    yield heard
    for signal, receiver in connected:
        signal.disconnect(receiver)


def hook(httpserver: HTTPServer, receiver: Receiver, path: str = "/hook") -> str:
    httpserver.expect_request(path, method="PUT").respond_with_handler(receiver)
    return str(httpserver.url_for(path))


def events() -> list[tuple[str, dict[str, Any]]]:
    return [
        (c.topic, c.new or {})
        for c in Change.objects.filter(model="pubsubpull.subscription").order_by("id")
    ]


@override_settings(PUBSUBPULL=SETTINGS)
def test_schedule_used_up_appends_failing_and_signals(
    api: Client, owner: User, httpserver: HTTPServer, heard: Heard
) -> None:
    receiver = Receiver(statuses=[500, 500, 500])
    put(api, "down", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: Subscription.objects.get(name="down").status == "failing")

    down = Subscription.objects.get(name="down")
    assert down.down_since is not None
    ((topic, event),) = events()
    assert topic == "pubsubpull.subscription.failing"
    assert event == {
        "name": "down",
        "owner": owner.username,
        "owner_id": owner.pk,
        "status": "failing",
        "last_error": down.last_error,
        "failures": 3,
        "down_since": down.down_since.isoformat(),
    }
    assert event["last_error"].startswith("HTTP 500: nope")
    assert heard.calls == [("failing", "down", event)]


@override_settings(PUBSUBPULL=SETTINGS)
def test_recovery_after_resume_appends_recovered_and_signals_once(
    api: Client, httpserver: HTTPServer, heard: Heard
) -> None:
    receiver = Receiver(statuses=[500, 500, 500])
    target = hook(httpserver, receiver)
    put(api, "flaky", {"target": target, "batch_size": 1}, status=201)
    Customer.objects.create(name="one")
    drain(lambda: Subscription.objects.get(name="flaky").status == "failing")
    since = Subscription.objects.get(name="flaky").down_since
    assert since is not None

    put(api, "flaky", {"target": target, "status": "active"}, status=200)  # resumed
    assert Subscription.objects.get(name="flaky").down_since == since  # still down
    drain(lambda: len(receiver.changes()) == 4)  # three failures and the success
    Customer.objects.create(name="two")  # a second success tells no one
    drain(lambda: len(receiver.changes()) == 5)

    assert [topic for topic, _ in events()] == [
        "pubsubpull.subscription.failing",
        "pubsubpull.subscription.recovered",
    ]
    recovered = events()[1][1]
    assert recovered["status"] == "active" and recovered["down_since"] == since.isoformat()
    assert recovered["failures"] == 0 and recovered["last_error"] is None  # resume cleared
    assert [(name, sub) for name, sub, _ in heard.calls] == [
        ("failing", "flaky"),
        ("recovered", "flaky"),
    ]
    assert Subscription.objects.get(name="flaky").down_since is None


@override_settings(PUBSUBPULL=SETTINGS)
def test_410_appends_disabled_and_signals(
    api: Client, httpserver: HTTPServer, heard: Heard
) -> None:
    receiver = Receiver(statuses=[410])
    put(api, "gone", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: Subscription.objects.get(name="gone").status == "disabled")
    ((topic, event),) = events()
    assert topic == "pubsubpull.subscription.disabled"
    assert event["status"] == "disabled" and event["failures"] == 1
    assert "410 Gone" in event["last_error"]
    assert [(name, sub) for name, sub, _ in heard.calls] == [("disabled", "gone")]


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_filter_failing_until_the_schedule_is_used_up_appends_failing(
    api: Client, httpserver: HTTPServer, heard: Heard
) -> None:
    receiver = Receiver()
    put(api, "bad-filter", {"target": hook(httpserver, receiver), "topics": ["shop.#"]}, 201)
    # a filter that fails whenever it runs, as one written by SQL may
    Subscription.objects.filter(name="bad-filter").update(filter="$.new ?? (")
    Customer.objects.create(name="x")
    drain(lambda: Subscription.objects.get(name="bad-filter").status == "failing")
    ((topic, event),) = events()
    assert topic == "pubsubpull.subscription.failing" and event["failures"] == 3
    assert event["last_error"].startswith("the filter is not a valid SQL/JSON path")
    assert [(name, sub) for name, sub, _ in heard.calls] == [("failing", "bad-filter")]
    assert receiver.requests == []


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_failing_retry_is_not_an_event(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver(statuses=[500, 500])  # two failures, then a success: never failing
    put(api, "blip", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: len(receiver.requests) == 3)
    drain(lambda: True)
    assert events() == []
    assert Subscription.objects.get(name="blip").down_since is None


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_broken_signal_receiver_does_not_stop_delivery(
    api: Client, httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("the pager is down")

    signals.subscription_failing.connect(broken, weak=False)
    try:
        receiver = Receiver(statuses=[500, 500, 500])
        put(api, "s", {"target": hook(httpserver, receiver)}, status=201)
        Customer.objects.create(name="x")
        drain(lambda: Subscription.objects.get(name="s").status == "failing")
    finally:
        signals.subscription_failing.disconnect(broken)
    assert [topic for topic, _ in events()] == ["pubsubpull.subscription.failing"]
    assert "the pager is down" in caplog.text


def paused(owner: User, name: str) -> Subscription:
    """A subscription that delivers nothing while a test runs."""
    return Subscription.objects.create(
        owner=owner, name=name, target="http://x.test/", status="paused"
    )


def tell(subscription: Subscription, status: str) -> None:
    data = subscription_events.payload(subscription, status, "HTTP 500", 9, None)
    with transaction.atomic():
        subscription_events.tell(subscription, status, data)


def pulled(user: User, topics: str | None = None) -> list[str]:
    """What ``user`` pulls: with ``topics``, their topics; else ``name op`` of each
    subscription event."""
    client = Client()
    client.force_login(user)
    url = TOPICS if topics is None else f"/pubsubpull/changes/?topics={topics}"
    response = client.get(url)
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    if topics is not None:
        return [c["topic"] for c in results]
    return [f"{c['new']['name']} {c['op']}" for c in results]


@override_settings(PUBSUBPULL=SETTINGS)
def test_only_topics_that_name_them_get_the_events(
    api: Client, owner: User, httpserver: HTTPServer
) -> None:
    """All topics ([]) and wildcards select what they did before these events existed."""
    receivers = {topics: Receiver() for topics in ("", "#", "*.*.*")}
    for index, (topics, receiver) in enumerate(receivers.items()):
        body = {
            "target": hook(httpserver, receiver, f"/r{index}"),
            "topics": [topics] if topics else [],
        }
        put(api, f"r{index}", body, status=201)
    named = Receiver()
    body = {"target": hook(httpserver, named, "/named"), "topics": ["pubsubpull.subscription.#"]}
    put(api, "named", body, status=201)
    tell(paused(owner, "s"), "failing")
    Customer.objects.create(name="after")
    drain(lambda: bool(named.changes()) and all(r.changes() for r in receivers.values()))
    drain(lambda: True)
    assert [c["topic"] for c in named.changes()] == ["pubsubpull.subscription.failing"]
    for topics, receiver in receivers.items():
        assert [c["topic"] for c in receiver.changes()] == ["shop.customer.insert"], topics
    for topics in ("", "%23"):  # pulls of every topic, and of #
        assert "shop.customer.insert" in pulled(owner, topics)
        assert "pubsubpull.subscription.failing" not in pulled(owner, topics)
    assert pulled(owner, "*.subscription.*") == []
    assert pulled(owner, "pubsubpull.%23") == ["pubsubpull.subscription.failing"]
    assert pulled(owner, "pubsubpull.subscription.disabled") == []


def test_events_are_visible_to_their_owner_and_to_staff() -> None:
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    staff = User.objects.create_user("operator", is_staff=True)
    # the permission that shows declared custom events does not show others' subscriptions
    bob.user_permissions.add(Permission.objects.get(codename="view_change"))
    hers = Subscription.objects.create(owner=alice, name="hers", target="http://x.test/")
    his = Subscription.objects.create(owner=bob, name="his", target="http://x.test/")
    local = Subscription.objects.create(name="local", target="python:x.y")
    tell(hers, "failing")
    tell(his, "disabled")
    tell(local, "failing")
    assert pulled(alice) == ["hers failing"]
    assert pulled(bob) == ["his disabled"]
    assert pulled(staff) == ["hers failing", "his disabled", "local failing"]
    assert pulled(User.objects.create_user("carol")) == []


@override_settings(PUBSUBPULL=SETTINGS)
def test_an_owner_can_subscribe_to_their_subscriptions_events(
    owner: User, httpserver: HTTPServer
) -> None:
    """A subscription of the events is told of another subscription of the same owner."""
    alice = User.objects.create_user("alice")
    client = Client()
    client.force_login(alice)
    watcher = Receiver()
    put(
        client,
        "watch",
        {"target": hook(httpserver, watcher, "/watch"), "topics": ["pubsubpull.subscription.*"]},
        status=201,
    )
    broken, others = paused(alice, "broken"), paused(owner, "others")
    tell(broken, "failing")
    tell(others, "failing")  # another owner's: not alice's to see
    drain(lambda: bool(watcher.changes()))
    drain(lambda: True)
    ((change,),) = [r.changes for r in watcher.requests]
    assert change["topic"] == "pubsubpull.subscription.failing"
    assert change["new"]["name"] == "broken" and change["new"]["owner"] == "alice"


seen: list[list[dict[str, Any]]] = []


def remember(changes: list[dict[str, Any]]) -> None:
    seen.append(changes)


@override_settings(PUBSUBPULL=SETTINGS)
def test_local_subscribers_receive_every_subscriptions_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pubsubpull import local_subscribers

    monkeypatch.setattr(local_subscribers, "_registered", {})
    seen.clear()
    pubsubpull.on("pubsubpull.subscription.*")(remember)
    local_subscribers.sync()
    someone = User.objects.create_user("someone")
    tell(paused(someone, "s"), "failing")
    drain(lambda: bool(seen))
    assert [[c["topic"] for c in batch] for batch in seen] == [["pubsubpull.subscription.failing"]]


def test_publish_refuses_pubsubpull_s_own_events() -> None:
    with pytest.raises(InvalidEvent, match="pubsubpull's own"):
        pubsubpull.publish("pubsubpull.subscription.recovered", {"name": "forged"})


def test_e014_events_may_not_declare_pubsubpull_s_own_label() -> None:
    with override_settings(PUBSUBPULL={"EVENTS": ["pubsubpull.subscription"]}):
        errors: list[CheckMessage] = check_settings()
    (error,) = errors
    assert error.id == "pubsubpull.E014" and "pubsubpull's own" in error.msg and error.hint
