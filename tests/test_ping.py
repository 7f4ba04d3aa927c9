"""Ping and resend (issue 11 item 6): a ``pubsubpull.ping`` event sent at once, outside
the queue; the changes after a position or since a time delivered again."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
import standardwebhooks
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone
from pytest_django.live_server_helper import LiveServer
from pytest_httpserver import HTTPServer

from pubsubpull.auth import create_token
from pubsubpull.client import NotFound, Service
from pubsubpull.models import Change, Delivery, Subscription
from pubsubpull.positions import Position
from pubsubpull.webhooks import generate_secret, sign
from test_project.shop.models import Customer
from tests.delivery_helpers import Receiver, put

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("loopback_targets"),
]


@pytest.fixture
def loopback_targets(settings: object) -> None:
    settings.PUBSUBPULL = {"ALLOWED_TARGETS": ["http://localhost:", "http://127.0.0.1:"]}  # type: ignore[attr-defined]


def hook(httpserver: HTTPServer, receiver: Receiver, method: str = "PUT") -> str:
    httpserver.expect_request("/hook", method=method).respond_with_handler(receiver)
    return str(httpserver.url_for("/hook"))


def ping(client: Client, name: str) -> tuple[int, dict[str, object]]:
    response = client.post(f"/pubsubpull/subscriptions/{name}/ping/")
    return response.status_code, response.json()


def test_ping_sends_a_signed_event_now_and_leaves_the_cursor(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver, secret = Receiver(), generate_secret()
    put(api, "pinged", {"target": hook(httpserver, receiver), "secret": secret}, status=201)
    before = Subscription.objects.get(name="pinged")
    Customer.objects.create(name="waiting")  # a change the ping must not deliver

    status, answer = ping(api, "pinged")
    assert status == 200 and answer["status_code"] == 204 and answer["error"] is None
    assert isinstance(answer["duration"], float)
    (received,) = receiver.requests
    standardwebhooks.Webhook(secret).verify(received.body, received.headers)
    (change,) = received.changes
    assert change["topic"] == "pubsubpull.ping" and change["new"] == {"subscription": "pinged"}
    assert received.payload["subscription"] == "pinged"
    after = Subscription.objects.get(name="pinged")
    assert (after.cursor, after.batch_id) == (before.cursor, before.batch_id)
    assert not Delivery.objects.exists()  # outside the queue: nothing recorded


def test_ping_says_how_a_failing_target_answered(api: Client, httpserver: HTTPServer) -> None:
    put(api, "down", {"target": hook(httpserver, Receiver(statuses=[500]))}, status=201)
    status, answer = ping(api, "down")
    assert status == 200 and answer["status_code"] == 500
    assert str(answer["error"]).startswith("HTTP 500")
    put(api, "refused", {"target": "http://127.0.0.1:9/closed"}, status=201)
    status, answer = ping(api, "refused")
    assert status == 200 and answer["status_code"] is None and answer["error"]


def test_standard_format_pings_are_standard_messages(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver()
    body = {"target": hook(httpserver, receiver, "POST"), "format": "standard"}
    put(api, "std", body, status=201)
    assert ping(api, "std")[1]["status_code"] == 204
    message = receiver.requests[0].payload
    assert message["type"] == "pubsubpull.ping" and message["data"]["op"] == "ping"


def test_ping_of_a_missing_or_someone_elses_subscription_is_404(
    api: Client, httpserver: HTTPServer
) -> None:
    put(api, "mine", {"target": hook(httpserver, Receiver())}, status=201)
    other = Client()
    other.force_login(User.objects.create_user("other"))
    assert ping(other, "mine")[0] == 404
    status, answer = ping(api, "nothing")
    assert status == 404 and answer["error"] == "not_found"
    assert Client().post("/pubsubpull/subscriptions/mine/ping/").status_code == 401
    assert api.get("/pubsubpull/subscriptions/mine/ping/").status_code == 405
    assert httpserver.log == []


def test_the_client_pings(live_server: LiveServer, httpserver: HTTPServer) -> None:
    owner = User.objects.create_superuser("svc", password=None)
    service = Service(f"{live_server.url}/pubsubpull/", token=create_token(owner)[1])
    service.subscribe("viaclient", hook(httpserver, Receiver()))
    assert service.ping("viaclient")["status_code"] == 204
    with pytest.raises(NotFound):
        service.ping("nothing")


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("pubsubpull", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_ping_command(api: Client, httpserver: HTTPServer) -> None:
    put(api, "cmd", {"target": hook(httpserver, Receiver(statuses=[204, 503]))}, status=201)
    assert command("ping", "subscriber", "cmd").startswith("ping answered 204 in ")
    with pytest.raises(CommandError, match="ping failed: 503") as failed:
        command("ping", "subscriber", "cmd")
    assert failed.value.returncode == 1
    with pytest.raises(CommandError, match="subscriber has no subscription named 'x'"):
        command("ping", "subscriber", "x")


def test_resend_from_a_position_or_a_time(api: Client, httpserver: HTTPServer) -> None:
    put(api, "again", {"target": hook(httpserver, Receiver())}, status=201)
    Customer.objects.create(name="old")
    with connection.cursor() as aging:  # made two days ago (changes are immutable to the ORM)
        aging.execute("UPDATE pubsubpull_change SET created = created - interval '2 days'")
    Customer.objects.create(name="new")
    Subscription.objects.filter(name="again").update(cursor=str(Position(2**40, 0)), batch_id="b")

    assert "resends the changes after 0-0" in command(
        "resend", "subscriber", "again", "--since", "0-0"
    )
    assert Subscription.objects.get(name="again").batch_id == ""  # the batch in flight dropped

    since = (timezone.now() - timedelta(days=1)).isoformat()
    command("resend", "subscriber", "again", "--since", since)
    cursor = Position.parse(Subscription.objects.get(name="again").cursor)
    new = Change.objects.get(new__name="new")
    old = Change.objects.get(new__name="old")
    assert (int(old.txid), old.id) <= cursor < (int(new.txid), new.id)

    for garbage in ("yesterday", "12-", "2026-13-45"):
        with pytest.raises(CommandError, match="neither a position"):
            command("resend", "subscriber", "again", "--since", garbage)


def test_a_receiver_view_acknowledges_a_ping_without_handling_it() -> None:
    from tests.test_webhooks import SECRET, URL, Recorder

    body = json.dumps(
        {"subscription": "s", "changes": [{"topic": "pubsubpull.ping", "op": "ping"}]}
    ).encode()
    Recorder.handled.clear()
    with override_settings(ROOT_URLCONF="tests.test_webhooks"):
        response = Client().put(
            URL, body, content_type="application/json", headers=sign(SECRET, "ping_1", body)
        )
    assert response.status_code == 204 and Recorder.handled == []


def test_the_admin_pings_and_shows_the_answer(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver(statuses=[204, 500])
    put(api, "adm", {"target": hook(httpserver, receiver)}, status=201)
    subscription = Subscription.objects.get(name="adm")
    url = "/admin/pubsubpull/subscription/"
    action = {"action": "ping", "_selected_action": [subscription.pk]}
    page = api.post(url, action, follow=True).content.decode()
    assert "Ping subscriber/adm: 204 in" in page
    page = api.post(url, action, follow=True).content.decode()
    assert "Ping subscriber/adm: 500 in" in page and "HTTP 500" in page
    assert [r.changes[0]["topic"] for r in receiver.requests] == ["pubsubpull.ping"] * 2
    assert Subscription.objects.get(name="adm").cursor == subscription.cursor
