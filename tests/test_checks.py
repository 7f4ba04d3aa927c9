"""System checks: each id fires on its mistake, with a hint, and not otherwise."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.conf import settings
from django.core import checks
from django.db import connection
from django.test import override_settings

from pubsubpull.checks import (
    check_database,
    check_middleware,
    check_settings,
    check_tracked_models,
)

TRACK = {"auth.user": {"exclude": ["password"]}}


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id for m in messages if m.id]


def test_the_test_project_passes_every_check() -> None:
    assert ids(checks.run_checks()) == []


def test_e001_database_is_not_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "vendor", "sqlite")
    (error,) = check_database()
    assert error.id == "pubsubpull.E001" and "sqlite" in error.msg
    assert "django.db.backends.postgresql" in error.hint


def test_e002_composite_primary_key() -> None:
    with override_settings(PUBSUBPULL={"TRACK": {**TRACK, "shop.stock": {}}}):
        (error,) = check_tracked_models()
    assert error.id == "pubsubpull.E002" and "shop.stock" in error.msg and error.hint


def test_e003_excluded_field_does_not_exist() -> None:
    with override_settings(PUBSUBPULL={"TRACK": {"shop.customer": {"exclude": ["pasword"]}}}):
        (error,) = check_tracked_models()
    assert error.id == "pubsubpull.E003" and "'pasword'" in error.msg
    assert "password" in error.hint


def test_e004_unknown_model_in_settings() -> None:
    with override_settings(PUBSUBPULL={"TRACK": {"shop.nothing": {}}}):
        (error,) = check_tracked_models()
    assert error.id == "pubsubpull.E004" and "shop.nothing" in error.msg


def test_w001_middleware_missing_while_tracking() -> None:
    middleware = [m for m in settings.MIDDLEWARE if "pubsubpull" not in m]
    with override_settings(MIDDLEWARE=middleware):
        (warning,) = check_middleware()
    assert warning.id == "pubsubpull.W001"
    assert "pubsubpull.middleware.RequestMiddleware" in warning.hint


def test_e005_unusable_allowed_target() -> None:
    for value in (["ftp://example.com/"], "http://127.0.0.1:"):
        with override_settings(PUBSUBPULL={"TRACK": TRACK, "ALLOWED_TARGETS": value}):
            assert "pubsubpull.E005" in ids(check_settings())
    with override_settings(PUBSUBPULL={"TRACK": TRACK, "ALLOWED_TARGETS": ["http://h:1/"]}):
        assert check_settings() == []


def test_e006_event_label_is_a_tracked_model() -> None:
    with override_settings(PUBSUBPULL={"TRACK": TRACK, "EVENTS": ["shop.customer"]}):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E006" and "shop.customer" in error.msg


@pytest.mark.django_db
def test_no_missing_migrations() -> None:
    from io import StringIO

    from django.core.management import call_command

    call_command("makemigrations", "pubsubpull", "--check", "--dry-run", stdout=StringIO())


def test_workers_get_the_wake_up_middleware() -> None:
    from procrastinate.contrib.django import app

    from pubsubpull import worker

    assert app.worker_defaults["worker_middleware"].count(worker.start_wakeups) == 1
    assert worker.install_worker_middleware()  # idempotent
    assert app.worker_defaults["worker_middleware"].count(worker.start_wakeups) == 1


def test_e007_procrastinate_listed_after_pubsubpull() -> None:
    script = """
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                    "pubsubpull", "procrastinate.contrib.django"],
    DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}},
)
django.setup()
from django.core.management import call_command
call_command("check")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "pubsubpull.E007" in result.stderr
    assert "before 'pubsubpull' in INSTALLED_APPS" in result.stderr


@pytest.mark.parametrize("value", [0, -1, 6, "0.1", None, True])
def test_e008_unusable_poll_interval(value: object) -> None:
    with override_settings(PUBSUBPULL={"POLL_INTERVAL": value}):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E008" and repr(value) in error.msg and error.hint


def test_poll_interval_accepts_seconds() -> None:
    with override_settings(PUBSUBPULL={"POLL_INTERVAL": 0.5}):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_TOPICS", 0), ("MAX_TOPICS", "50"), ("MAX_TOPICS", 2.5), ("MAX_TOPICS", True),
        ("MAX_FILTER_LENGTH", -1), ("FILTER_TIMEOUT", 0), ("FILTER_TIMEOUT", None),
        ("MAX_SUBSCRIPTIONS", 0), ("MAX_WAITING", -1), ("MAX_WAITING", 10**9),
    ],
)  # fmt: skip
def test_e009_unusable_limit(key: str, value: object) -> None:
    with override_settings(PUBSUBPULL={key: value}):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E009" and key in error.msg and repr(value) in error.msg
    assert "default" in error.hint


def test_limits_accept_their_range() -> None:
    limits = {"MAX_TOPICS": 1, "FILTER_TIMEOUT": 0.5, "MAX_WAITING": 0, "MAX_SUBSCRIPTIONS": 5}
    with override_settings(PUBSUBPULL=limits):
        assert check_settings() == []


@pytest.mark.parametrize(
    "options",
    [{"REQUEST_QUERY": "yes"}, {"REDACT_QUERY": "token"}, {"REDACT_QUERY": ["token", 1]}],
)
def test_e010_unusable_request_query_options(options: dict[str, object]) -> None:
    with override_settings(PUBSUBPULL=options):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E010" and next(iter(options)) in error.msg and error.hint
