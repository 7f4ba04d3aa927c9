from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client


@pytest.fixture(autouse=True)
def _empty_change_log(request: pytest.FixtureRequest) -> None:
    """Transactional tests start with an empty change log.

    Django empties tables between transactional tests with TRUNCATE, and the capture
    triggers faithfully record those truncates.
    """
    marker = request.node.get_closest_marker("django_db")
    if marker and (marker.kwargs.get("transaction") or "live_server" in request.fixturenames):
        request.getfixturevalue("transactional_db")
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE pubsubpull_change, pubsubpull_request")


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings: Any) -> None:
    """Users' passwords hashed with MD5 in tests: PBKDF2's 0.3 s per user (creating
    users, HTTP Basic) was a third of the suite's time. Never for real passwords."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    """Tests start with an empty cache: failed Basic attempts (counted per address, and
    every test client is 127.0.0.1) and receivers' seen webhook-ids do not carry over."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("alice", password="alice-password")


@pytest.fixture
def owner() -> User:
    """A superuser: may subscribe and view every model."""
    return User.objects.create_superuser("subscriber", password="subscriber-password")


@pytest.fixture
def api(owner: User) -> Client:
    """A client logged in as ``owner``."""
    client = Client()
    client.force_login(owner)
    return client
