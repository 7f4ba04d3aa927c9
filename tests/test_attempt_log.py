"""The attempt log: each Delivery keeps what was sent and what came back, and when."""

from __future__ import annotations

from datetime import timedelta

import pytest
import standardwebhooks
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pubsubpull import delivery
from pubsubpull.models import Delivery, Subscription
from pubsubpull.positions import Position
from pubsubpull.prune import prune
from pubsubpull.webhooks import generate_secret
from test_project.shop.models import Customer
from tests.delivery_helpers import Received, drain, put

pytestmark = pytest.mark.django_db(transaction=True)

LONG_BODY = b"".join(b"line %04d of a long answer\n" % i for i in range(400))  # ~10 KB


class Answers:
    """Records every request; answers each with the next planned Response (then 204)."""

    def __init__(self, *answers: Response) -> None:
        self.answers = list(answers)
        self.requests: list[Received] = []

    def __call__(self, request: Request) -> Response:
        self.requests.append(Received(dict(request.headers), request.get_data()))
        return self.answers.pop(0) if self.answers else Response(status=204)


def hook(httpserver: HTTPServer, answers: Answers) -> str:
    httpserver.expect_request("/hook", method="PUT").respond_with_handler(answers)
    return str(httpserver.url_for("/hook"))


def logged(name: str) -> list[Delivery]:
    return list(Delivery.objects.filter(subscription__name=name).order_by("id"))


def stored_rows() -> str:
    """Every delivery row as PostgreSQL stores it, as text."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(string_agg(d::text, ' '), '') FROM pubsubpull_delivery d")
        return str(cursor.fetchone()[0])


def test_each_attempt_logs_headers_status_body_and_times(
    api: Client, httpserver: HTTPServer
) -> None:
    secret = generate_secret()
    failed = Response(LONG_BODY, status=500, headers={"X-Request-Id": "req-1"})
    answers = Answers(failed)
    put(api, "logged", {"target": hook(httpserver, answers), "secret": secret}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: len(logged("logged")) == 2 and logged("logged")[-1].ok)

    first, second = logged("logged")
    sent_first = answers.requests[0].headers
    assert first.status_code == 500 and second.status_code == 204
    # what was sent: the headers pubsubpull set, the signature redacted
    assert first.request_headers == {
        "Content-Type": "application/json",
        "User-Agent": "pubsubpull",
        "webhook-id": sent_first["Webhook-Id"],
        "webhook-timestamp": sent_first["Webhook-Timestamp"],
        "webhook-signature": "REDACTED",
    }
    standardwebhooks.Webhook(secret).verify(answers.requests[0].body, sent_first)  # was signed
    # what came back: status, headers, the first 4 KB of the body
    assert first.response_headers["X-Request-Id"] == "req-1"
    assert first.response_headers["Content-Length"] == str(len(LONG_BODY))
    assert first.response_body == LONG_BODY[:4096].decode()
    assert second.response_body == "" and "X-Request-Id" not in second.response_headers
    # when
    for attempt in (first, second):
        assert attempt.sent is not None and attempt.answered is not None
        assert attempt.sent <= attempt.answered <= attempt.created
    assert first.answered is not None and second.sent is not None
    assert first.answered <= second.sent


def test_the_signature_is_never_stored(api: Client, httpserver: HTTPServer) -> None:
    secret = generate_secret()
    answers = Answers(Response("no", status=500))
    put(api, "signed", {"target": hook(httpserver, answers), "secret": secret}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: len(logged("signed")) == 2)
    signatures = [r.headers["Webhook-Signature"] for r in answers.requests]
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    rows = stored_rows()
    for signature in signatures:
        assert signature not in rows and signature.removeprefix("v1,") not in rows
    assert secret not in rows and secret.removeprefix("whsec_") not in rows


def test_headers_a_subscriber_adds_are_redacted_too() -> None:
    headers = {
        "Content-Type": "application/json",
        "webhook-id": "msg_1",
        "webhook-signature": "v1,abc v1,def",
        "Authorization": "Bearer s3cret",
        "X-Tenant": "acme",
    }
    assert delivery.logged_request_headers(headers) == {
        "Content-Type": "application/json",
        "webhook-id": "msg_1",
        "webhook-signature": "REDACTED",
        "Authorization": "REDACTED",
        "X-Tenant": "REDACTED",
    }


def test_no_answer_logs_the_request_and_no_response(api: Client) -> None:
    put(api, "refused", {"target": "http://127.0.0.1:9/closed"}, status=201)  # discard port
    Customer.objects.create(name="x")
    drain(lambda: bool(logged("refused")))
    attempt = logged("refused")[0]  # retried at once (the schedule starts with 0 s)
    assert attempt.status_code is None and "Connection" in attempt.error
    assert attempt.sent is not None and attempt.answered is None
    assert attempt.request_headers["webhook-id"] and "webhook-signature" not in (
        attempt.request_headers
    )  # unsigned
    assert attempt.response_headers == {} and attempt.response_body == ""


def test_a_binary_answer_is_stored_as_text(api: Client, httpserver: HTTPServer) -> None:
    binary = b"\x00\xff\xfe bad \x00 bytes \xe2\x82"  # NUL, invalid UTF-8, a cut character
    answers = Answers(Response(binary, status=500, headers={"X-Odd": "caf\xe9"}))
    put(api, "binary", {"target": hook(httpserver, answers)}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: len(logged("binary")) == 2)
    first = logged("binary")[0]
    assert first.status_code == 500
    assert "\x00" not in first.response_body and " bad " in first.response_body
    assert first.response_headers["X-Odd"] == "caf\xe9"
    assert Subscription.objects.get(name="binary").failures == 0  # and delivered after


def test_local_subscriber_attempts_are_logged_with_their_times() -> None:
    subscription = Subscription.objects.create(
        name="local", target="python:tests.test_attempt_log.receive", cursor="0-0"
    )
    batch = delivery.Batch("b", ['{"id": "1-1"}'], Position(1, 1), Position(1, 1))
    attempt = delivery.send(subscription, batch)
    assert attempt.ok and attempt.sent is not None and attempt.answered is not None
    assert attempt.request_headers == {} and attempt.response_headers == {}


def receive(changes: list[object]) -> None:
    """A local subscriber that accepts everything."""


def refuse_with_nul(changes: list[object]) -> None:
    """A local subscriber whose error message holds a NUL character."""
    raise ValueError("bad\x00byte")


def test_an_error_with_a_nul_character_is_recorded() -> None:
    subscription = Subscription.objects.create(
        name="nul", target="python:tests.test_attempt_log.refuse_with_nul", cursor="0-0"
    )
    batch = delivery.Batch("b", ['{"id": "1-1"}'], Position(1, 1), Position(1, 1))
    attempt = delivery.send(subscription, batch)
    assert not attempt.ok and attempt.answered is None
    delivery.record(subscription, batch, attempt)  # PostgreSQL text refuses NUL: replaced
    assert Delivery.objects.get().error == "ValueError: bad\ufffdbyte"


def test_admin_shows_the_attempt_log(api: Client, owner: User) -> None:
    subscription = Subscription.objects.create(owner=owner, name="s", target="http://x.test/")
    now = timezone.now()
    attempt = Delivery.objects.create(
        subscription=subscription,
        batch_id="b",
        first="1-1",
        last="1-2",
        count=2,
        status_code=503,
        error="HTTP 503: busy",
        duration=timedelta(seconds=1),
        request_headers={"webhook-id": "msg_42", "webhook-signature": "REDACTED"},
        response_headers={"Retry-After": "120", "X-Evil": "<script>alert(1)</script>"},
        response_body="the receiver said <b>busy</b>",
        sent=now,
        answered=now + timedelta(seconds=1),
    )
    page = api.get(f"/admin/pubsubpull/delivery/{attempt.pk}/change/").content.decode()
    shown = [
        "webhook-id: msg_42",
        "webhook-signature: REDACTED",
        "Retry-After: 120",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "the receiver said &lt;b&gt;busy",
        "Request headers",
        "Response headers",
        "Response body",
        "Sent",
        "Answered",
    ]
    for text in shown:
        assert text in page, text
    assert "<script>alert(1)" not in page


def test_prune_removes_old_attempts_with_their_log(owner: User) -> None:
    subscription = Subscription.objects.create(owner=owner, name="s", target="http://x.test/")
    for batch_id in ("old", "new"):
        Delivery.objects.create(
            subscription=subscription,
            batch_id=batch_id,
            first="1-1",
            last="1-2",
            count=2,
            status_code=500,
            duration=timedelta(0),
            request_headers={"webhook-id": batch_id},
            response_headers={"X": "y"},
            response_body="body",
            sent=timezone.now(),
        )
    Delivery.objects.filter(batch_id="old").update(created=timezone.now() - timedelta(days=2))
    pruned = prune(timezone.now() - timedelta(days=1))
    assert pruned.deliveries == 1
    assert list(Delivery.objects.values_list("batch_id", flat=True)) == ["new"]
