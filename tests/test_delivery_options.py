"""Delivery options (issue 11): byte-capped and thin batches, over a real worker and a real
loopback receiver."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from pytest_httpserver import HTTPServer

import pubsubpull
from pubsubpull import reads
from pubsubpull.delivery import fitting
from pubsubpull.models import Subscription
from pubsubpull.positions import START
from test_project.shop.models import Customer
from tests.delivery_helpers import Receiver, drain, put

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
        Customer.objects.create(name=f"customer-{i:02}", email=f"c{i:02}@example.com")
    texts = sent_texts()
    assert len(texts) == 10
    # Three changes fit, whatever the few bytes by which their times and ids differ; a
    # fourth (over 200 bytes) does not.
    cap = envelope("sized") + sum(len(t.encode()) for t in texts[:3]) + 2 * 2 + 40
    assert all(len(t.encode()) > 200 for t in texts)
    state = put(api, "sized", {"target": target, "topics": ["shop.customer.*"],
                               "max_bytes": cap, "status": "active"}, 200)  # fmt: skip
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
    put(api, "big", {"target": hook(httpserver, receiver), "topics": ["billing.#", "shop.#"],
                     "max_bytes": 1000}, 201)  # fmt: skip
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
        api, "thin",
        {"target": hook(httpserver, receiver), "topics": ["shop.customer.*"], "payload": "thin",
         "filter": '$.new.name starts with "keep"'},  # the filter still sees "new"
        status=201,
    )  # fmt: skip
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
            "id", "seq", "topic", "model", "op", "pk", "fields", "request", "context", "time",
        }  # fmt: skip
        assert change["pk"] == str(kept.pk)
    assert changes[1]["fields"] == ["email", "name"]


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
