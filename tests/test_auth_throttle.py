"""Failed credentials are throttled per client address before they cost a password hash."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.contrib.auth.models import User
from django.core.cache import cache
from django.http import HttpRequest
from django.test import Client, RequestFactory

from pubsubpull import auth
from pubsubpull.auth import AuthenticationFailed, Throttled, authenticate, create_token

ATTACKER = "203.0.113.7"  # documentation addresses (RFC 5737)
OTHER = "198.51.100.2"


@pytest.fixture(autouse=True)
def hashed(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The passwords hashed since the test began, with a fast hasher.

    A Basic check hashes once, an unknown user's too (Django's timing-attack defence). No
    failure counts before or after the test.
    """
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    calls: list[str] = []
    encode = MD5PasswordHasher.encode

    def counted(self: MD5PasswordHasher, password: str, salt: str) -> str:
        calls.append(password)
        return encode(self, password, salt)

    monkeypatch.setattr(MD5PasswordHasher, "encode", counted)
    cache.clear()
    yield calls
    cache.clear()  # other tests' clients share these addresses' cache


def basic(password: str, address: str, username: str = "alice") -> HttpRequest:
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
    return RequestFactory().get("/", HTTP_AUTHORIZATION=f"Basic {credentials}", REMOTE_ADDR=address)


def bearer(token: str, address: str) -> HttpRequest:
    return RequestFactory().get("/", HTTP_AUTHORIZATION=f"Bearer {token}", REMOTE_ADDR=address)


def fail(request: HttpRequest, times: int = auth.FAILURE_LIMIT) -> None:
    for _ in range(times):
        with pytest.raises(AuthenticationFailed) as caught:
            authenticate(request)
        assert not isinstance(caught.value, Throttled)


@pytest.mark.django_db
def test_after_ten_failures_the_next_attempt_is_throttled_without_hashing(
    user: User, hashed: list[str]
) -> None:
    hashed.clear()  # the user's password, set by the fixture
    fail(basic("wrong", ATTACKER))
    assert len(hashed) == auth.FAILURE_LIMIT == 10
    with pytest.raises(Throttled) as caught:
        authenticate(basic("wrong", ATTACKER))
    assert len(hashed) == 10  # refused before any password check
    assert auth.FAILURE_WINDOW - 1 <= caught.value.retry_after <= auth.FAILURE_WINDOW
    assert "too many failed authentication attempts" in str(caught.value)


@pytest.mark.django_db
def test_right_password_from_a_throttled_address_is_refused_too(
    user: User, hashed: list[str]
) -> None:
    hashed.clear()  # the user's password, set by the fixture
    fail(basic("wrong", ATTACKER))
    with pytest.raises(Throttled):
        authenticate(basic("alice-password", ATTACKER))  # else guessing could go on
    assert len(hashed) == 10


@pytest.mark.django_db
def test_other_addresses_still_authenticate(user: User) -> None:
    fail(basic("wrong", ATTACKER))
    assert authenticate(basic("alice-password", OTHER)) == user
    fail(basic("wrong", OTHER), times=auth.FAILURE_LIMIT - 1)  # OTHER has its own count
    assert authenticate(basic("alice-password", OTHER)) == user


@pytest.mark.django_db
def test_failures_below_the_limit_do_not_block(user: User) -> None:
    fail(basic("wrong", ATTACKER), times=auth.FAILURE_LIMIT - 1)
    assert authenticate(basic("alice-password", ATTACKER)) == user
    fail(basic("wrong", ATTACKER), times=1)  # a success does not reset the count
    with pytest.raises(Throttled):
        authenticate(basic("alice-password", ATTACKER))


@pytest.mark.django_db
def test_the_window_ends(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "FAILURE_WINDOW", 1)
    fail(basic("wrong", ATTACKER))
    with pytest.raises(Throttled) as caught:
        authenticate(basic("alice-password", ATTACKER))
    assert caught.value.retry_after == 1
    time.sleep(1.1)
    assert authenticate(basic("alice-password", ATTACKER)) == user
    fail(basic("wrong", ATTACKER))  # a new window, counted from zero
    with pytest.raises(Throttled):
        authenticate(basic("alice-password", ATTACKER))


@pytest.mark.django_db
def test_tokens_are_never_throttled_nor_counted(user: User, hashed: list[str]) -> None:
    # A token costs a SHA-256 to check; refusing tokens would let one client's wrong
    # passwords lock out every service behind the same address.
    _, token = create_token(user)
    hashed.clear()  # the user's password, set by the fixture
    fail(bearer("psp_wrong", ATTACKER), times=3 * auth.FAILURE_LIMIT)
    assert authenticate(basic("alice-password", ATTACKER)) == user  # bearer not counted
    fail(basic("wrong", ATTACKER), times=auth.FAILURE_LIMIT - 1)
    malformed = RequestFactory().get("/", HTTP_AUTHORIZATION="Basic !", REMOTE_ADDR=ATTACKER)
    fail(malformed, times=1)  # counted like any Basic failure
    with pytest.raises(Throttled):
        authenticate(basic("alice-password", ATTACKER))
    assert authenticate(bearer(token, ATTACKER)) == user  # still served
    assert len(hashed) == auth.FAILURE_LIMIT  # the well-formed Basic attempts only


@pytest.mark.django_db
def test_malformed_basic_credentials_are_refused_without_hashing(hashed: list[str]) -> None:
    for credentials in ("!!!", "YWxpY2U=", "YWxpY2U6cHc", "/w=="):  # "alice", cut, not UTF-8
        request = RequestFactory().get("/", HTTP_AUTHORIZATION=f"Basic {credentials}")
        with pytest.raises(AuthenticationFailed, match="malformed Basic credentials"):
            authenticate(request)
    assert hashed == []


@pytest.mark.django_db
def test_requests_without_credentials_are_not_throttled(user: User) -> None:
    fail(basic("wrong", ATTACKER))
    request = RequestFactory().get("/", REMOTE_ADDR=ATTACKER)
    request.user = user  # a session's user, from AuthenticationMiddleware
    assert authenticate(request) == user
    with pytest.raises(AuthenticationFailed):  # an unknown scheme is not counted
        authenticate(RequestFactory().get("/", HTTP_AUTHORIZATION="Digest x", REMOTE_ADDR=OTHER))


@pytest.mark.django_db
def test_api_answers_429_with_retry_after(user: User) -> None:
    client = Client(REMOTE_ADDR=ATTACKER)
    wrong = "Basic " + base64.b64encode(b"alice:wrong").decode()
    for _ in range(auth.FAILURE_LIMIT):
        assert client.get("/pubsubpull/", HTTP_AUTHORIZATION=wrong).status_code == 401
    response = client.get("/pubsubpull/", HTTP_AUTHORIZATION=wrong)
    assert response.status_code == 429
    assert response.json()["error"] == "throttled"
    assert 1 <= int(response["Retry-After"]) <= auth.FAILURE_WINDOW
