"""Delivery options (issue 11): byte-capped and thin batches, over a real worker and a real
loopback receiver."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import standardwebhooks
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import WebhookVerificationError
from werkzeug import Request, Response

import pubsubpull
from pubsubpull import delivery, reads
from pubsubpull.delivery import fitting, signing_secrets
from pubsubpull.models import Delivery, Subscription
from pubsubpull.positions import START
from pubsubpull.webhooks import generate_secret
from test_project.shop.models import Customer
from tests.delivery_helpers import Received, Receiver, drain, put

pytestmark = pytest.mark.django_db(transaction=True)


def hook(httpserver: HTTPServer, receiver: Receiver, method: str = "PUT") -> str:
    httpserver.expect_request("/hook", method=method).respond_with_handler(receiver)
    return str(httpserver.url_for("/hook"))


def envelope(name: str) -> int:
    """Bytes of a batch body holding no change."""
    return len(json.dumps({"subscription": name, "changes": []}).encode())


def sent_texts() -> list[str]:
    """The change JSON texts as a full-payload subscription of everything sends them."""
    return reads.changes_page(["shop.customer"], START, [], 1000).results


# -- item 3: byte-capped batches ---------------------------------------------------------


def test_a_batch_ends_before_its_body_would_exceed_max_bytes(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    target = hook(httpserver, receiver)
    put(api, "sized", {"target": target, "topics": ["shop.customer.*"], "status": "paused"}, 201)
    for i in range(10):
        # long enough that three changes are more than the smallest max_bytes (1,000)
        Customer.objects.create(name=f"customer-{i:02}", email=f"c{i:02}{'x' * 100}@example.com")
    texts = sent_texts()
    assert len(texts) == 10
    # Three changes fit, whatever the few bytes by which their times and ids differ; a
    # fourth (over 200 bytes) does not.
    cap = envelope("sized") + sum(len(t.encode()) for t in texts[:3]) + 2 * 2 + 40
    assert all(len(t.encode()) > 200 for t in texts)
    state = put(
        api,
        "sized",
        {"target": target, "topics": ["shop.customer.*"], "max_bytes": cap, "status": "active"},
        200,
    )
    assert state["max_bytes"] == cap
    drain(lambda: len(receiver.changes()) >= 10)

    bodies = [r.body for r in receiver.requests]
    sizes = [len(b) for b in bodies]
    counts = [len(r.changes) for r in receiver.requests]
    assert counts == [3, 3, 3, 1]
    assert all(size <= cap for size in sizes) and sizes[0] == cap - 40
    assert [c["new"]["name"] for c in receiver.changes()] == [f"customer-{i:02}" for i in range(10)]
    start = 0
    for body, count in zip(bodies[:-1], counts[:-1], strict=True):
        start += count
        assert len(body) + 2 + len(texts[start].encode()) > cap  # the next one did not fit


def test_a_change_larger_than_max_bytes_goes_alone_and_delivery_moves_on(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    put(
        api,
        "big",
        {
            "target": hook(httpserver, receiver),
            "topics": ["billing.#", "shop.#"],
            "max_bytes": 1000,
        },
        201,
    )
    Customer.objects.create(name="before")
    pubsubpull.publish("billing.invoice.paid", {"lines": ["x" * 100] * 30})  # about 3 KB
    Customer.objects.create(name="after-1")
    Customer.objects.create(name="after-2")
    drain(lambda: len(receiver.changes()) >= 4)

    topics = [[c["topic"] for c in r.changes] for r in receiver.requests]
    assert topics == [
        ["shop.customer.insert"],  # the big one did not fit with it
        ["billing.invoice.paid"],  # alone, over the cap
        ["shop.customer.insert", "shop.customer.insert"],
    ]
    assert len(receiver.requests[1].body) > 1000
    assert all(len(r.body) <= 1000 for r in receiver.requests if r is not receiver.requests[1])
    state = api.get("/pubsubpull/subscriptions/big/").json()
    assert (state["status"], state["failures"], state["lag"]) == ("active", 0, 0)


def test_fitting_counts_the_changes_whose_body_stays_within_max_bytes() -> None:
    subscription = Subscription(name="n", target="http://127.0.0.1:1/", max_bytes=1000)
    room = 1000 - envelope("n")
    assert fitting(subscription, ["x" * room, "y"]) == 1  # exactly full: the cap is inclusive
    assert fitting(subscription, ["a" * 100, "b" * (room - 102), "c"]) == 2  # ", " counted
    assert fitting(subscription, ["a" * 100, "b" * (room - 101)]) == 1  # one byte over
    assert fitting(subscription, ["z" * 5000, "a"]) == 1  # too large: alone, never stuck
    assert fitting(subscription, ["a", "b", "c"]) == 3
    local = Subscription(name="n", target="python:tests.handler", max_bytes=1000)
    assert fitting(local, ["z" * 5000] * 3) == 3  # a local subscriber gets no body


def test_fitting_counts_bytes_not_characters() -> None:
    subscription = Subscription(name="n", target="http://127.0.0.1:1/", max_bytes=1000)
    room = 1000 - envelope("n")
    # 4 bytes a character at most: these would not fit so counted, but do in bytes
    assert fitting(subscription, ["a" * (room // 2 - 1), "b" * (room // 2 - 1)]) == 2
    # two bytes each in UTF-8: half as many characters fill the body
    assert fitting(subscription, ["é" * (room // 2), "a"]) == 1
    assert fitting(subscription, ["é" * (room // 2 - 2), "a"]) == 2
    assert fitting(subscription, ["é" * (room // 2 + 1)]) == 1  # alone, as any too large


def test_max_bytes_defaults_to_the_setting(
    api: Client, httpserver: HTTPServer, settings: Any
) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "MAX_BATCH_BYTES": 1000}
    receiver = Receiver()
    created = put(api, "default", {"target": hook(httpserver, receiver)}, 201)
    assert created["max_bytes"] is None and created["payload"] == "full"
    for i in range(6):
        Customer.objects.create(name=f"d{i}")
    drain(lambda: len(receiver.changes()) >= 6)
    assert len(receiver.requests) > 1
    assert all(len(r.body) <= 1000 for r in receiver.requests)


# -- item 3: thin payloads ---------------------------------------------------------------


def test_thin_payload_sends_changes_without_old_and_new(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    created = put(
        api,
        "thin",
        {
            "target": hook(httpserver, receiver),
            "topics": ["shop.customer.*"],
            "payload": "thin",
            "filter": '$.new.name starts with "keep"',
        },  # the filter still sees "new"
        status=201,
    )
    assert created["payload"] == "thin"
    kept = Customer.objects.create(name="keep-1")
    Customer.objects.create(name="drop")
    Customer.objects.filter(pk=kept.pk).update(name="keep-2", email="k@example.com")
    drain(lambda: len(receiver.changes()) >= 2)

    changes = receiver.changes()
    assert [c["op"] for c in changes] == ["insert", "update"]
    for change in changes:
        assert "old" not in change and "new" not in change
        assert set(change) == {
            "id",
            "seq",
            "topic",
            "model",
            "op",
            "pk",
            "fields",
            "request",
            "context",
            "time",
        }
        assert change["pk"] == str(kept.pk)
    assert changes[1]["fields"] == ["email", "name"]


# -- item 4: secret rotation -------------------------------------------------------------


def signatures(received: Received) -> list[str]:
    return received.headers["Webhook-Signature"].split(" ")


def test_a_new_secret_signs_beside_the_old_one_during_the_grace_then_alone(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    target = hook(httpserver, receiver)
    old, new = generate_secret(), generate_secret()
    assert put(api, "rot", {"target": target, "secret": old}, 201)["previous_secret_until"] is None
    before = timezone.now()
    rotated = put(api, "rot", {"target": target, "secret": new}, 200)
    until = Subscription.objects.get(name="rot").previous_secret_until
    assert until is not None and rotated["previous_secret_until"] == until.isoformat()
    assert timedelta(hours=24) <= until - before < timedelta(hours=24, minutes=1)  # the default

    Customer.objects.create(name="during")
    drain(lambda: len(receiver.requests) >= 1)
    during = receiver.requests[0]
    assert len(signatures(during)) == 2
    for secret in (new, old):  # the library's own check, with either secret
        standardwebhooks.Webhook(secret).verify(during.body, during.headers)

    # The grace ends (as if a day had passed): only the new secret signs.
    Subscription.objects.filter(name="rot").update(previous_secret_until=timezone.now())
    Customer.objects.create(name="after")
    drain(lambda: len(receiver.requests) >= 2)
    after = receiver.requests[1]
    assert len(signatures(after)) == 1
    standardwebhooks.Webhook(new).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(old).verify(after.body, after.headers)
    assert api.get("/pubsubpull/subscriptions/rot/").json()["previous_secret_until"] is None


def test_signing_secrets_at_a_given_time(owner: Any) -> None:
    old, new = generate_secret(), generate_secret()
    put_as(owner, {"secret": old})
    put_as(owner, {"secret": new})
    subscription = Subscription.objects.get(name="s")
    until = subscription.previous_secret_until
    assert until is not None
    assert signing_secrets(subscription, until - timedelta(seconds=1)) == [new, old]
    assert signing_secrets(subscription, until) == [new]
    assert signing_secrets(Subscription(name="unsigned", target="http://x/"), until) == []


def put_as(owner: Any, body: dict[str, Any], status: int | None = None) -> dict[str, Any]:
    client = Client()
    client.force_login(owner)
    return put(client, "s", {"target": "http://localhost:8001/x", **body}, status)


def test_rotation_is_encrypted_and_never_shown(api: Client, owner: Any) -> None:
    old, new = generate_secret(), generate_secret()
    put_as(owner, {"secret": old}, 201)
    put_as(owner, {"secret": new}, 200)
    stored = Subscription.objects.get(name="s")
    assert stored.previous_secret and old not in stored.previous_secret
    assert new not in stored.secret
    admin = "/admin/pubsubpull/subscription/"
    for url in (
        "/pubsubpull/subscriptions/",
        "/pubsubpull/subscriptions/s/",
        admin,
        f"{admin}{stored.pk}/change/",
    ):
        content = api.get(url).content.decode()
        for secret in (old, new, stored.secret, stored.previous_secret):
            assert secret not in content, url


def test_the_same_secret_again_keeps_the_rotation_and_no_secret_ends_it(owner: Any) -> None:
    old, new = generate_secret(), generate_secret()
    put_as(owner, {"secret": old}, 201)
    until = put_as(owner, {"secret": new}, 200)["previous_secret_until"]
    assert put_as(owner, {"secret": new}, 200)["previous_secret_until"] == until
    assert put_as(owner, {}, 200)["previous_secret_until"] == until  # secret kept
    newer = generate_secret()
    put_as(owner, {"secret": newer})
    subscription = Subscription.objects.get(name="s")
    assert signing_secrets(subscription, timezone.now()) == [newer, new]  # the one replaced
    unsigned = put_as(owner, {"secret": None}, 200)
    assert unsigned["signed"] is False and unsigned["previous_secret_until"] is None
    assert signing_secrets(Subscription.objects.get(name="s"), timezone.now()) == []


def test_no_grace_replaces_the_secret_at_once(owner: Any, settings: Any) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "SECRET_ROTATION_GRACE": 0}
    old, new = generate_secret(), generate_secret()
    put_as(owner, {"secret": old}, 201)
    assert put_as(owner, {"secret": new}, 200)["previous_secret_until"] is None
    assert signing_secrets(Subscription.objects.get(name="s"), timezone.now()) == [new]


# -- item 5: the standard format and extra headers ---------------------------------------

FAST_RETRIES = {
    "ALLOWED_TARGETS": ["http://localhost:", "http://127.0.0.1:"],
    "RETRY_SCHEDULE": [0.01, 0.02, 0.04, 0.05],  # failing after 5 attempts
}


def test_standard_format_posts_each_change_in_order_as_standard_webhooks_messages(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    secret = generate_secret()
    created = put(
        api,
        "std",
        {
            "target": hook(httpserver, receiver, "POST"),
            "topics": ["shop.customer.*"],
            "format": "standard",
            "secret": secret,
            "batch_size": 10,
        },
        status=201,
    )
    assert created["format"] == "standard"
    first = Customer.objects.create(name="s0")
    Customer.objects.create(name="s1")
    Customer.objects.filter(pk=first.pk).update(name="s0-renamed")
    drain(lambda: len(receiver.requests) >= 3)

    messages = []
    for request in receiver.requests:
        # The official library verifies and parses each message unchanged.
        message = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
        assert set(message) == {"type", "timestamp", "data"}
        assert message["type"] == message["data"]["topic"]
        assert message["timestamp"] == message["data"]["time"]
        messages.append(message)
    assert [(m["type"], m["data"]["new"]["name"]) for m in messages] == [
        ("shop.customer.insert", "s0"),
        ("shop.customer.insert", "s1"),
        ("shop.customer.update", "s0-renamed"),
    ]
    positions = [tuple(map(int, m["data"]["id"].split("-"))) for m in messages]
    assert positions == sorted(positions)
    assert len({r.headers["Webhook-Id"] for r in receiver.requests}) == 3  # one id per change
    assert (
        list(Delivery.objects.order_by("id").values_list("count", "status_code")) == [(1, 204)] * 3
    )
    state = api.get("/pubsubpull/subscriptions/std/").json()
    assert state["cursor"] >= messages[-1]["data"]["id"] and state["lag"] == 0
    assert state["failures"] == 0


@override_settings(PUBSUBPULL=FAST_RETRIES)
def test_standard_format_retries_the_failed_change_with_its_id_and_never_resends_the_acknowledged(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver(statuses=[204, 500, 503, 204, 204])
    put(
        api,
        "std",
        {
            "target": hook(httpserver, receiver, "POST"),
            "format": "standard",
            "topics": ["shop.customer.*"],
        },
        201,
    )
    Customer.objects.create(name="a")
    Customer.objects.create(name="b")
    Customer.objects.create(name="c")
    drain(lambda: len(receiver.requests) >= 5)

    sent = [(r.headers["Webhook-Id"], r.payload["data"]["new"]["name"]) for r in receiver.requests]
    assert [name for _, name in sent] == ["a", "b", "b", "b", "c"]  # "a" never again
    assert sent[1][0] == sent[2][0] == sent[3][0]  # a retry carries the same webhook-id
    assert len({sent[0][0], sent[1][0], sent[4][0]}) == 3
    assert receiver.requests[1].body == receiver.requests[3].body
    attempts = list(Delivery.objects.order_by("id").values_list("status_code", flat=True))
    assert attempts == [204, 500, 503, 204, 204]
    subscription = Subscription.objects.get(name="std")
    assert (subscription.failures, subscription.batch_id) == (0, "")


def test_standard_format_stops_a_turn_when_its_time_is_up_and_keeps_the_rest_in_flight(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    put(
        api,
        "std",
        {
            "target": hook(httpserver, receiver, "POST"),
            "format": "standard",
            "topics": ["shop.customer.*"],
            "status": "paused",
        },
        201,
    )
    for name in ("a", "b", "c"):
        Customer.objects.create(name=name)
    Subscription.objects.filter(name="std").resume()
    subscription = Subscription.objects.select_related("owner").get(name="std")
    batch = delivery.next_batch(subscription)
    assert batch is not None and len(batch.changes) == 3
    assert delivery.deliver_each(subscription, batch, budget=0) is not None
    assert [r.payload["data"]["new"]["name"] for r in receiver.requests] == ["a"]

    subscription.refresh_from_db()
    assert subscription.batch_id == batch.id  # the rest is still in flight
    rest = delivery.next_batch(subscription)
    assert rest is not None and rest.id == batch.id and len(rest.changes) == 2
    delivery.deliver_each(subscription, rest)
    assert [r.payload["data"]["new"]["name"] for r in receiver.requests] == ["a", "b", "c"]
    subscription.refresh_from_db()
    assert subscription.batch_id == "" and subscription.cursor == str(batch.last)


def test_a_replay_sends_the_changes_again_under_new_webhook_ids(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    target = hook(httpserver, receiver, "POST")
    body = {"target": target, "format": "standard", "topics": ["shop.customer.*"]}
    start = put(api, "std", body, 201)["cursor"]
    Customer.objects.create(name="a")
    drain(lambda: len(receiver.requests) >= 1)
    put(api, "std", {**body, "cursor": start}, 200)
    drain(lambda: len(receiver.requests) >= 2)
    first, again = receiver.requests[:2]
    assert first.payload == again.payload
    assert first.headers["Webhook-Id"] != again.headers["Webhook-Id"]


@dataclass
class PausingReceiver(Receiver):
    """Pauses subscription "std" while answering its first request."""

    def __call__(self, request: Request) -> Response:
        if not self.requests:
            Subscription.objects.filter(name="std").pause()
            connection.close()  # this server thread's own connection
        return super().__call__(request)


def test_standard_format_sends_no_more_of_the_batch_once_paused(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = PausingReceiver()
    target = hook(httpserver, receiver, "POST")
    put(api, "std", {"target": target, "format": "standard", "topics": ["shop.customer.*"]}, 201)
    for name in ("a", "b", "c"):
        Customer.objects.create(name=name)
    drain(lambda: Delivery.objects.exists())
    drain(lambda: True)
    assert [r.payload["data"]["new"]["name"] for r in receiver.requests] == ["a"]

    put(
        api,
        "std",
        {"target": target, "format": "standard", "topics": ["shop.customer.*"], "status": "active"},
        200,
    )
    drain(lambda: len(receiver.requests) >= 3)
    assert [r.payload["data"]["new"]["name"] for r in receiver.requests] == ["a", "b", "c"]


def test_extra_headers_arrive_and_only_their_names_are_shown(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver()
    target = hook(httpserver, receiver)
    token = "Bearer s3cret-token-value"
    headers = {"Authorization": token, "X-Tenant": "acme"}
    created = put(api, "hdr", {"target": target, "headers": headers}, 201)
    assert created["headers"] == ["Authorization", "X-Tenant"]
    stored = Subscription.objects.get(name="hdr")
    assert token not in json.dumps(stored.headers)  # encrypted at rest
    admin = "/admin/pubsubpull/subscription/"
    for url in (
        "/pubsubpull/subscriptions/",
        "/pubsubpull/subscriptions/hdr/",
        admin,
        f"{admin}{stored.pk}/change/",
    ):
        content = api.get(url).content.decode()
        assert token not in content and stored.headers["Authorization"] not in content, url
    assert "Authorization" in api.get(f"{admin}{stored.pk}/change/").content.decode()

    Customer.objects.create(name="h")
    drain(lambda: len(receiver.requests) >= 1)
    headers = receiver.requests[0].headers
    assert headers["Authorization"] == token and headers["X-Tenant"] == "acme"
    assert headers["Content-Type"] == "application/json"

    kept = put(api, "hdr", {"target": target}, 200)  # left out: kept, like the secret
    assert kept["headers"] == ["Authorization", "X-Tenant"]
    assert put(api, "hdr", {"target": target, "headers": {}}, 200)["headers"] == []
    assert put(api, "hdr", {"target": target, "headers": None}, 200)["headers"] == []


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "transfer-encoding",
        "Host",
        "Content-Length",
        "Content-Type",
        "TE",
        "Upgrade",
        "Keep-Alive",
        "webhook-signature",
        "Webhook-Id",
        "WEBHOOK-TIMESTAMP",
    ],
)
def test_hop_by_hop_and_signature_headers_are_refused_naming_the_header(
    api: Client, name: str
) -> None:
    secret_value = "value-never-echoed"
    answer = put(
        api,
        "bad",
        {"target": "http://localhost:8001/x", "headers": {name: secret_value}},
        status=400,
    )
    assert list(answer["fields"]) == ["headers"]
    assert repr(name) in answer["fields"]["headers"][0]
    assert secret_value not in json.dumps(answer)
    assert not Subscription.objects.exists()


# -- the subscription API ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_bytes", 0),
        ("max_bytes", -1),
        ("max_bytes", 999),
        ("max_bytes", 10**12),
        ("max_bytes", "1000000"),
        ("max_bytes", 1e6),
        ("max_bytes", True),
        ("payload", "none"),
        ("payload", None),
        ("payload", ["thin"]),
        ("format", "soap"),
        ("format", None),
        ("format", 1),
        ("headers", "Authorization: Bearer x"),
        ("headers", ["Authorization", "x"]),
        ("headers", 7),
        ("headers", {"X-A": 1}),
        ("headers", {"X-A": None}),
        ("headers", {"X-A": ["a"]}),
        ("headers", {"X-A": {"b": "c"}}),
        ("headers", {"X-A": "a\r\nX-Injected: 1"}),
        ("headers", {"X-A": "a\nb"}),
        ("headers", {"X-A": " leading space"}),
        ("headers", {"X-A": "é"}),
        ("headers", {"X-A": "x" * 4001}),
        ("headers", {"bad name": "x"}),
        ("headers", {"X-A:": "x"}),
        ("headers", {"": "x"}),
        ("headers", {"X" * 101: "x"}),
        ("headers", {"X-A": "a", "x-a": "b"}),
        ("headers", {f"X-{i}": "v" for i in range(21)}),
    ],
)
def test_bad_delivery_options_are_400_naming_the_field(api: Client, field: str, value: Any) -> None:
    answer = put(api, "bad", {"target": "http://localhost:8001/x", field: value}, status=400)
    assert answer["error"] == "invalid_subscription"
    assert list(answer["fields"]) == [field] and answer["fields"][field][0]
    assert field in answer["detail"]
    assert not Subscription.objects.exists()


def test_replacing_without_the_options_restores_their_defaults(api: Client) -> None:
    body = {"target": "http://localhost:8001/x", "max_bytes": 5000, "payload": "thin"}
    created = put(api, "opts", body, status=201)
    assert (created["max_bytes"], created["payload"]) == (5000, "thin")
    replaced = put(api, "opts", {"target": "http://localhost:8001/x"}, status=200)
    assert (replaced["max_bytes"], replaced["payload"]) == (None, "full")
