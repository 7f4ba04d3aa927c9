"""Standard Webhooks signing (sender side) and verification (receiver side)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
import standardwebhooks
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, RequestFactory
from django.urls import path

from pubsubpull.webhooks import (
    TOLERANCE,
    InvalidPayload,
    InvalidSecret,
    InvalidSignature,
    ReceiverView,
    generate_secret,
    sign,
    verify,
)

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

SECRET = generate_secret()
URL = "/hook/"


class Recorder(ReceiverView):
    """The receiver under test: records what it handled, fails while told to."""

    secret: str | Sequence[str] = SECRET
    handled: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    failures = 0  # how many of the next calls raise
    reenter: Client | None = None  # when set, deliver the same request again from handle
    nested: Response | None = None  # the answer to that second delivery

    def handle(self, changes: list[dict[str, Any]], payload: dict[str, Any]) -> None:
        if Recorder.reenter is not None:
            client, Recorder.reenter = Recorder.reenter, None
            copy = {name: self.request.headers[name] for name in HEADER_NAMES}
            Recorder.nested = put(client, self.request.body, copy)
        if Recorder.failures:
            Recorder.failures -= 1
            raise RuntimeError("database is down, secret detail")
        Recorder.handled.append((changes, payload))


class NoSecret(ReceiverView):
    def handle(self, changes: list[dict[str, Any]], payload: dict[str, Any]) -> None:
        raise AssertionError("never called")


OLD_SECRET = generate_secret()


class Rotating(Recorder):
    """A receiver switching secrets: it accepts the new one and the old one."""

    secret = [SECRET, OLD_SECRET]


urlpatterns = [path("hook/", Recorder.as_view()), path("rotating/", Rotating.as_view())]
pytestmark = pytest.mark.urls("tests.test_webhooks")
HEADER_NAMES = ("webhook-id", "webhook-timestamp", "webhook-signature")


@pytest.fixture(autouse=True)
def _fresh_receiver() -> None:
    caches["default"].clear()
    Recorder.handled = []
    Recorder.failures = 0
    Recorder.reenter = None
    Recorder.nested = None


def delivery(changes: list[dict[str, Any]] | None = None) -> bytes:
    if changes is None:
        changes = [{"position": "1", "topic": "shop.order.insert", "new": {"id": 1}}]
    return json.dumps({"subscription": "orders", "changes": changes}).encode()


def put(
    client: Client,
    body: bytes,
    headers: dict[str, str],
    method: str = "put",
) -> Response:
    send = getattr(client, method)
    response: Response = send(URL, body, content_type="application/json", headers=headers)
    return response


# -- generate_secret and sign -------------------------------------------------------------


def test_generate_secret_is_whsec_base64_of_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_")
    assert 24 <= len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) <= 32
    assert first != second


def test_sign_returns_the_three_headers_that_standardwebhooks_verifies() -> None:
    body = delivery()
    headers = sign(SECRET, "msg_1", body)
    assert set(headers) == set(HEADER_NAMES)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-signature"].startswith("v1,")
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == json.loads(body)


def test_sign_uses_the_given_timestamp_in_whole_seconds_whatever_its_zone() -> None:
    moment = datetime.now(UTC).replace(microsecond=600_000)
    elsewhere = moment.astimezone(timezone(timedelta(hours=-7)))
    headers = sign(SECRET, "msg_1", "{}", timestamp=elsewhere)
    assert headers["webhook-timestamp"] == str(int(moment.timestamp()))
    assert headers == sign(SECRET, "msg_1", b"{}", timestamp=moment)
    standardwebhooks.Webhook(SECRET).verify("{}", headers)


def test_sign_for_a_retry_keeps_the_id_and_signs_the_new_timestamp() -> None:
    now = datetime.now(UTC)
    first = sign(SECRET, "batch-7", b"{}", timestamp=now - timedelta(seconds=30))
    retry = sign(SECRET, "batch-7", b"{}", timestamp=now)
    assert retry["webhook-id"] == first["webhook-id"]
    assert retry["webhook-signature"] != first["webhook-signature"]


def test_sign_refuses_naive_timestamps_and_blank_ids() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sign(SECRET, "msg_1", b"{}", timestamp=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="message id"):
        sign(SECRET, "", b"{}")
    with pytest.raises(ValueError, match="message id"):
        sign(SECRET, "a b", b"{}")


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_not base64!"])
def test_unusable_secrets_are_refused_with_what_to_do(secret: str) -> None:
    with pytest.raises(InvalidSecret, match="generate_secret"):
        sign(secret, "msg_1", b"{}")


# -- verify ---------------------------------------------------------------------------------


def test_verify_returns_the_parsed_body_of_a_signed_request(rf: RequestFactory) -> None:
    body = delivery()
    request = rf.put(URL, body, content_type="application/json", headers=sign(SECRET, "m", body))
    assert verify(request, SECRET) == json.loads(body)


def test_verify_accepts_a_secret_without_prefix(rf: RequestFactory) -> None:
    body = delivery()
    request = rf.put(URL, body, content_type="application/json", headers=sign(SECRET, "m", body))
    assert verify(request, SECRET.removeprefix("whsec_")) == json.loads(body)


def test_verify_names_the_missing_headers(rf: RequestFactory) -> None:
    body = delivery()
    headers = sign(SECRET, "m", body)
    del headers["webhook-signature"], headers["webhook-timestamp"]
    request = rf.put(URL, body, content_type="application/json", headers=headers)
    with pytest.raises(InvalidSignature, match="missing headers: webhook-timestamp, webhook-sig"):
        verify(request, SECRET)


def test_verify_refuses_a_tampered_body(rf: RequestFactory) -> None:
    headers = sign(SECRET, "m", delivery())
    tampered = delivery([{"position": "1", "new": {"id": 2}}])
    request = rf.put(URL, tampered, content_type="application/json", headers=headers)
    with pytest.raises(InvalidSignature, match="No matching signature"):
        verify(request, SECRET)


def test_verify_raises_invalid_payload_for_a_signed_body_that_is_not_json(
    rf: RequestFactory,
) -> None:
    headers = sign(SECRET, "m", b"not json")
    request = rf.put(URL, b"not json", content_type="application/json", headers=headers)
    with pytest.raises(InvalidPayload, match="not JSON") as raised:
        verify(request, SECRET)
    assert isinstance(raised.value, ValueError)
    assert not isinstance(raised.value, InvalidSignature)


# -- ReceiverView ---------------------------------------------------------------------------


def test_receiver_handles_a_signed_delivery(client: Client) -> None:
    body = delivery()
    response = put(client, body, sign(SECRET, "m1", body))
    assert response.status_code == 204
    assert Recorder.handled == [(json.loads(body)["changes"], json.loads(body))]


@pytest.mark.parametrize("method", ["put", "post"])
def test_receiver_accepts_put_and_post_without_csrf_token(method: str) -> None:
    client = Client(enforce_csrf_checks=True)
    body = delivery()
    assert put(client, body, sign(SECRET, f"m-{method}", body), method).status_code == 204
    assert len(Recorder.handled) == 1


@pytest.mark.parametrize("method", ["get", "delete", "patch"])
def test_receiver_refuses_other_methods(client: Client, method: str) -> None:
    response = getattr(client, method)(URL)
    assert response.status_code == 405
    assert sorted(response["Allow"].split(", ")) == ["POST", "PUT"]


def assert_unauthorized(response: Response, detail: str) -> None:
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    data = json.loads(response.content)
    assert data["error"] == "invalid_signature"
    assert detail in data["detail"]
    assert Recorder.handled == []


def test_receiver_answers_401_for_a_tampered_body(client: Client) -> None:
    headers = sign(SECRET, "m", delivery())
    response = put(client, delivery([{"position": "1", "new": {"evil": True}}]), headers)
    assert_unauthorized(response, "No matching signature")


def test_receiver_answers_401_for_another_secret(client: Client) -> None:
    body = delivery()
    assert_unauthorized(put(client, body, sign(generate_secret(), "m", body)), "No matching")


@pytest.mark.parametrize("missing", HEADER_NAMES)
def test_receiver_answers_401_when_a_header_is_missing(client: Client, missing: str) -> None:
    body = delivery()
    headers = sign(SECRET, "m", body)
    del headers[missing]
    assert_unauthorized(put(client, body, headers), f"missing headers: {missing}")


@pytest.mark.parametrize(
    ("offset", "detail"),
    [(timedelta(minutes=-10), "too old"), (timedelta(minutes=10), "too new")],
)
def test_receiver_answers_401_outside_the_timestamp_tolerance(
    client: Client, offset: timedelta, detail: str
) -> None:
    body = delivery()
    headers = sign(SECRET, "m", body, timestamp=datetime.now(UTC) + offset)
    assert_unauthorized(put(client, body, headers), detail)


def test_receiver_accepts_timestamps_within_the_tolerance(client: Client) -> None:
    body = delivery()
    moment = datetime.now(UTC) - TOLERANCE + timedelta(seconds=30)
    assert put(client, body, sign(SECRET, "m", body, timestamp=moment)).status_code == 204


@pytest.mark.parametrize("signature", ["garbage", "v1,%%%", "v1"])
def test_receiver_answers_401_for_a_malformed_signature(client: Client, signature: str) -> None:
    body = delivery()
    headers = {**sign(SECRET, "m", body), "webhook-signature": signature}
    assert_unauthorized(put(client, body, headers), "")


def test_receiver_answers_401_for_a_non_numeric_timestamp(client: Client) -> None:
    body = delivery()
    headers = {**sign(SECRET, "m", body), "webhook-timestamp": "yesterday"}
    assert_unauthorized(put(client, body, headers), "Invalid")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'["a list"]', "expected"),
        (b'{"subscription": "orders"}', "expected"),
        (b'{"subscription": "orders", "changes": [1, 2]}', "expected"),
    ],
)
def test_receiver_answers_400_for_a_signed_body_that_is_not_a_delivery(
    client: Client, body: bytes, detail: str
) -> None:
    # standardwebhooks signs text: a non-UTF-8 body is refused before its signature matters.
    headers = sign(SECRET, "m", body if body.isascii() else b"{}")
    response = put(client, body, headers)
    assert response.status_code == 400
    assert json.loads(response.content)["error"] == "invalid_payload"
    assert detail in json.loads(response.content)["detail"]
    assert Recorder.handled == []


def test_receiver_answers_413_for_a_body_over_the_upload_limit(
    client: Client, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    body = delivery([{"position": str(n)} for n in range(20)])
    response = put(client, body, sign(SECRET, "m", body))
    assert response.status_code == 413
    assert json.loads(response.content)["error"] == "payload_too_large"


def test_receiver_handles_a_message_id_once(client: Client) -> None:
    body = delivery()
    assert put(client, body, sign(SECRET, "batch-1", body)).status_code == 204
    # The sender's retry: same id, signed again with a later timestamp.
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert put(client, body, sign(SECRET, "batch-1", body, timestamp=later)).status_code == 204
    assert put(client, body, sign(SECRET, "batch-1", body)).status_code == 204
    assert len(Recorder.handled) == 1
    assert put(client, body, sign(SECRET, "batch-2", body)).status_code == 204
    assert len(Recorder.handled) == 2


def test_receiver_answers_503_when_handle_fails_and_handles_the_retry(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    body = delivery()
    Recorder.failures = 1
    with caplog.at_level(logging.ERROR, logger="pubsubpull.webhooks"):
        response = put(client, body, sign(SECRET, "batch-1", body))
    assert response.status_code == 503
    assert json.loads(response.content) == {
        "error": "handler_failed",
        "detail": "the changes were not handled; retry later",
    }
    assert b"secret detail" not in response.content and b"Traceback" not in response.content
    [record] = [r for r in caplog.records if r.name == "pubsubpull.webhooks"]
    assert "batch-1" in record.getMessage() and record.exc_info is not None
    assert Recorder.handled == []

    assert put(client, body, sign(SECRET, "batch-1", body)).status_code == 204
    assert len(Recorder.handled) == 1


def test_receiver_answers_503_to_a_copy_arriving_while_the_message_is_handled(
    client: Client,
) -> None:
    body = delivery()
    Recorder.reenter = Client()
    assert put(client, body, sign(SECRET, "batch-1", body)).status_code == 204
    assert Recorder.nested is not None
    assert Recorder.nested.status_code == 503
    assert Recorder.nested["Retry-After"]
    assert json.loads(Recorder.nested.content)["error"] == "in_progress"
    assert len(Recorder.handled) == 1


def test_handled_ids_outlive_the_replay_window() -> None:
    assert ReceiverView.dedupe_timeout > 2 * TOLERANCE.total_seconds()


def test_receiver_without_a_secret_says_how_to_configure_it(rf: RequestFactory) -> None:
    body = delivery()
    request = rf.put(URL, body, content_type="application/json", headers=sign(SECRET, "m", body))
    with pytest.raises(ImproperlyConfigured, match="set its `secret` attribute"):
        NoSecret.as_view()(request)


def test_receiver_handle_must_be_implemented() -> None:
    with pytest.raises(NotImplementedError, match="must implement handle"):
        ReceiverView().handle([], {})


# -- secret rotation: several secrets ------------------------------------------------------


def test_sign_with_several_secrets_gives_one_signature_each_that_each_verifies() -> None:
    body = delivery()
    headers = sign([SECRET, OLD_SECRET], "m", body)
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert signatures[0] == sign(SECRET, "m", body, _at(headers))["webhook-signature"]
    for secret in (SECRET, OLD_SECRET):
        standardwebhooks.Webhook(secret).verify(body, headers)  # raises if not signed with it
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(body, headers)


def _at(headers: dict[str, str]) -> datetime:
    return datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)


@pytest.mark.parametrize("signed_with", [SECRET, OLD_SECRET], ids=["new", "old"])
def test_verify_with_a_list_accepts_a_delivery_signed_with_any_of_them(
    rf: RequestFactory, signed_with: str
) -> None:
    body = delivery()
    headers = sign(signed_with, "m", body)
    request = rf.put(URL, body, content_type="application/json", headers=headers)
    assert verify(request, [SECRET, OLD_SECRET]) == json.loads(body)
    assert verify(request, (OLD_SECRET, SECRET)) == json.loads(body)


def test_verify_with_a_list_refuses_a_delivery_signed_with_none_of_them(
    rf: RequestFactory,
) -> None:
    body = delivery()
    headers = sign(generate_secret(), "m", body)
    request = rf.put(URL, body, content_type="application/json", headers=headers)
    with pytest.raises(InvalidSignature, match="No matching signature"):
        verify(request, [SECRET, OLD_SECRET])
    stale = sign([SECRET, OLD_SECRET], "m", body, datetime.now(UTC) - 2 * TOLERANCE)
    request = rf.put(URL, body, content_type="application/json", headers=stale)
    with pytest.raises(InvalidSignature, match="timestamp too old"):
        verify(request, [SECRET, OLD_SECRET])


def test_an_empty_list_of_secrets_is_refused(rf: RequestFactory) -> None:
    body = delivery()
    request = rf.put(URL, body, content_type="application/json", headers=sign(SECRET, "m", body))
    with pytest.raises(InvalidSecret, match="no webhook secret"):
        verify(request, [])
    with pytest.raises(InvalidSecret, match="no webhook secret"):
        sign([], "m", body)


@pytest.mark.parametrize("signed_with", [SECRET, OLD_SECRET], ids=["new", "old"])
def test_receiver_with_a_list_of_secrets_handles_deliveries_signed_with_either(
    client: Client, signed_with: str
) -> None:
    body = delivery()
    response = client.put(
        "/rotating/", body, content_type="application/json", headers=sign(signed_with, "m", body)
    )
    assert response.status_code == 204 and len(Recorder.handled) == 1
    other = sign(generate_secret(), "m2", body)
    response = client.put("/rotating/", body, content_type="application/json", headers=other)
    assert response.status_code == 401 and len(Recorder.handled) == 1


# -- the standard format (one change per message) ------------------------------------------


@pytest.mark.parametrize("method", ["post", "put"])
def test_receiver_handles_a_standard_format_message_as_one_change(
    client: Client, method: str
) -> None:
    change = {"id": "5-7", "topic": "shop.order.insert", "new": {"id": 1}}
    body = json.dumps(
        {"type": change["topic"], "timestamp": "2026-12-02T08:00:00+00:00", "data": change}
    ).encode()
    response = put(client, body, sign(SECRET, "std-1", body), method)
    assert response.status_code == 204
    assert Recorder.handled == [([change], json.loads(body))]


def test_receiver_answers_400_for_a_standard_message_whose_data_is_not_a_change(
    client: Client,
) -> None:
    body = json.dumps({"type": "x.y.z", "timestamp": "t", "data": [1]}).encode()
    response = put(client, body, sign(SECRET, "std-2", body))
    assert response.status_code == 400 and response.json()["error"] == "invalid_payload"
    assert Recorder.handled == []
