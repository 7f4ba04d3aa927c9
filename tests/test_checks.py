"""System checks: each id fires on its mistake, with a hint, and not otherwise."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.core import checks
from django.db import OperationalError, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model
from django.test import override_settings

from pubsubpull import conf
from pubsubpull.checks import (
    check_database,
    check_database_version,
    check_deprecated_settings,
    check_middleware,
    check_routers,
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
    assert "django.db.backends.postgresql" in str(error.hint)


def test_e002_composite_primary_key() -> None:
    with override_settings(PUBSUBPULL={"TRACK": {**TRACK, "shop.stock": {}}}):
        (error,) = check_tracked_models()
    assert error.id == "pubsubpull.E002" and "shop.stock" in error.msg and error.hint


def test_e003_excluded_field_does_not_exist() -> None:
    with override_settings(PUBSUBPULL={"TRACK": {"shop.customer": {"exclude": ["pasword"]}}}):
        (error,) = check_tracked_models()
    assert error.id == "pubsubpull.E003" and "'pasword'" in error.msg
    assert "password" in str(error.hint)


def test_e004_unknown_model_in_settings() -> None:
    with override_settings(PUBSUBPULL={"TRACK": {"shop.nothing": {}}}):
        (error,) = check_tracked_models()
    assert error.id == "pubsubpull.E004" and "shop.nothing" in error.msg


def test_w001_middleware_missing_while_tracking() -> None:
    middleware = [m for m in settings.MIDDLEWARE if "pubsubpull" not in m]
    with override_settings(MIDDLEWARE=middleware):
        (warning,) = check_middleware()
    assert warning.id == "pubsubpull.W001"
    assert "pubsubpull.middleware.RequestMiddleware" in str(warning.hint)


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
        ("MAX_TOPICS", 0),
        ("MAX_TOPICS", "50"),
        ("MAX_TOPICS", 2.5),
        ("MAX_TOPICS", True),
        ("MAX_FILTER_LENGTH", -1),
        ("FILTER_TIMEOUT", 0),
        ("FILTER_TIMEOUT", None),
        ("MAX_SUBSCRIPTIONS", 0),
        ("MAX_WAITING", -1),
        ("MAX_WAITING", 10**9),
        ("WORKER_CONN_MAX_AGE", -1),
        ("WORKER_CONN_MAX_AGE", "300"),
        ("MAX_BATCH_BYTES", 0),
        ("MAX_BATCH_BYTES", 999),
        ("MAX_BATCH_BYTES", 10**9),
        ("MAX_BATCH_BYTES", "1000000"),
        ("MAX_BATCH_BYTES", 1e6),
        ("SECRET_ROTATION_GRACE", -1),
        ("SECRET_ROTATION_GRACE", "86400"),
        ("SECRET_ROTATION_GRACE", math.inf),
        ("SECRET_ROTATION_GRACE", 366 * 86400),
    ],
)
def test_e009_unusable_limit(key: str, value: object) -> None:
    with override_settings(PUBSUBPULL={key: value}):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E009" and key in error.msg and repr(value) in error.msg
    assert "default" in str(error.hint)


def test_limits_accept_their_range() -> None:
    limits = {
        "MAX_TOPICS": 1,
        "FILTER_TIMEOUT": 0.5,
        "MAX_WAITING": 0,
        "WORKER_CONN_MAX_AGE": 0,
        "MAX_SUBSCRIPTIONS": 5,
        "MAX_BATCH_BYTES": 1000,
        "SECRET_ROTATION_GRACE": 0,
    }
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


def test_e001_server_older_than_postgresql_14(monkeypatch: pytest.MonkeyPatch) -> None:
    wrapper = connections["default"]  # `connection` is a proxy: patch what it stands for
    monkeypatch.setitem(wrapper.__dict__, "pg_version", 130011)  # 13.11
    (error,) = check_database_version(databases=["default"])
    assert error.id == "pubsubpull.E001" and "13.11" in error.msg and "14" in str(error.hint)
    assert check_database_version() == []  # a database check: only when asked for
    monkeypatch.setitem(wrapper.__dict__, "pg_version", 140000)
    assert check_database_version(databases=["default"]) == []


@contextmanager
def default_database(**changes: object) -> Iterator[BaseDatabaseWrapper]:
    """A new connection as the default database, with these settings changed.

    Its own alias: Django checks the server version on the first connection of each
    alias only.
    """
    original = connections["default"]
    wrapper = type(original)({**original.settings_dict, **changes}, alias="version-check")
    connections["default"] = wrapper
    try:
        yield wrapper
    finally:
        connections["default"] = original
        wrapper.close()


@pytest.mark.django_db
def test_e001_server_version_of_the_real_database() -> None:
    assert check_database_version(databases=["default"]) == []
    with default_database() as wrapper:
        # As a server older than Django's minimum: Django refuses it, E001 says so.
        wrapper.features.minimum_database_version = (99,)
        (error,) = check_database_version(databases=["default"])
    assert error.id == "pubsubpull.E001" and "99 or later is required" in error.msg


@pytest.mark.django_db
def test_e001_skipped_when_the_database_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed: connections are refused
    with default_database(HOST="127.0.0.1", PORT=str(port)) as wrapper:
        assert check_database_version(databases=["default"]) == []
        with pytest.raises(OperationalError):
            wrapper.ensure_connection()


def test_settings_has_one_typed_property_per_key() -> None:
    properties = {k: v for k, v in vars(conf.Settings).items() if isinstance(v, property)}
    assert sorted(properties) == sorted(conf.DEFAULTS)
    for key, prop in properties.items():
        kind = typing.get_type_hints(prop.fget)["return"]
        kind = typing.get_origin(kind) or kind
        assert isinstance(conf.DEFAULTS[key], (int, float) if kind is float else kind), key
        with override_settings(PUBSUBPULL={}):
            assert getattr(conf.settings, key) == conf.DEFAULTS[key]
    with override_settings(PUBSUBPULL={"MAX_TOPICS": 7}):
        assert conf.settings.MAX_TOPICS == 7 == conf.get("MAX_TOPICS")
        assert conf.settings.PAGE_SIZE == 100 and conf.settings.TRACK == {}


@pytest.mark.parametrize("key", sorted(conf.DEFAULTS))
def test_every_key_is_checked(key: str) -> None:
    with override_settings(PUBSUBPULL={key: object()}):
        errors = check_settings()
    assert errors and all(key in e.msg and e.hint for e in errors)


def test_e011_settings_are_not_a_dict() -> None:
    with override_settings(PUBSUBPULL=["TRACK"]):
        (error,) = check_settings()
        assert conf.settings.MAX_TOPICS == 50 and conf.track() == {}
    assert error.id == "pubsubpull.E011" and "['TRACK']" in error.msg and error.hint


@pytest.mark.parametrize(
    ("key", "meant"),
    [("MAX_TOPIC", "'MAX_TOPICS'"), ("max_wait", "'MAX_WAIT'"), ("RETRY_CAPS", "'RETRY_CAP'")],
)
def test_e012_unknown_key_names_the_close_match(key: str, meant: str) -> None:
    with override_settings(PUBSUBPULL={key: 5}):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E012" and repr(key) in error.msg
    assert str(error.hint).startswith(f"Did you mean {meant}")


def test_e012_unknown_key_without_a_close_match_lists_the_keys() -> None:
    with override_settings(PUBSUBPULL={"COLOUR": "blue"}):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E012" and "MAX_PAGE_SIZE" in str(error.hint)


@pytest.mark.parametrize(
    "track",
    [
        ["shop.customer"],
        {"shop.customer": ["password"]},
        {"shop.customer": {"exclude": "password"}},
        {"shop.customer": {"exlude": ["password"]}},
        {"shop.customer": {"exclude": ["password", 1]}},
        {1: {}},
    ],
)
def test_e013_unusable_track(track: object) -> None:
    with override_settings(PUBSUBPULL={"TRACK": track}):
        (error,) = check_settings()
        assert conf.track() == {}  # not tracked with a misread exclude
    assert error.id == "pubsubpull.E013" and "TRACK" in error.msg and "exclude" in str(error.hint)


def test_track_accepts_empty_or_missing_options() -> None:
    track = {"shop.customer": None, "shop.order": {}, "auth.user": {"exclude": ("password",)}}
    with override_settings(PUBSUBPULL={"TRACK": track}):
        assert check_settings() == []
        assert conf.settings.TRACK == {**track, "shop.customer": {}}


@pytest.mark.parametrize("events", ["billing.invoice", ["billing.invoice", 1], [""], None])
def test_e014_unusable_events(events: object) -> None:
    with override_settings(PUBSUBPULL={"EVENTS": events}):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E014" and repr(events) in error.msg and error.hint


def test_e005_allowed_targets_not_a_list() -> None:
    with override_settings(PUBSUBPULL={"ALLOWED_TARGETS": 8001}):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E005" and "8001" in error.msg


@pytest.mark.parametrize(
    ("key", "value", "id"),
    [
        ("MAX_FAILURES", 0, "E015"),
        ("MAX_FAILURES", 2.5, "E015"),
        ("MAX_FAILURES", "10", "E015"),
        ("MAX_FAILURES", True, "E015"),
        ("RETRY_BASE", 0, "E016"),
        ("RETRY_BASE", -1.0, "E016"),
        ("RETRY_CAP", math.inf, "E016"),
        ("RETRY_CAP", math.nan, "E016"),
        ("DELIVERY_TIMEOUT", 0, "E017"),
        ("DELIVERY_TIMEOUT", None, "E017"),
        ("MAX_WAIT", -1, "E018"),
        ("MAX_WAIT", "30", "E018"),
        ("SWEEP_INTERVAL", 0, "E019"),
        ("SWEEP_INTERVAL", 0.5, "E019"),
        ("MAX_PAGE_SIZE", 0, "E020"),
        ("PAGE_SIZE", 0, "E020"),
        ("PAGE_SIZE", "100", "E020"),
    ],
)
def test_e015_to_e020_unusable_number(key: str, value: object, id: str) -> None:
    with override_settings(PUBSUBPULL={key: value}):
        (error,) = check_settings()
    assert error.id == f"pubsubpull.{id}" and key in error.msg and repr(value) in error.msg
    assert "default" in str(error.hint)


@pytest.mark.parametrize(
    ("options", "id"),
    [
        ({"RETRY_BASE": 10, "RETRY_CAP": 5}, "E016"),
        ({"PAGE_SIZE": 2000}, "E020"),
        ({"PAGE_SIZE": 50, "MAX_PAGE_SIZE": 20}, "E020"),
    ],
)
def test_e016_e020_smaller_setting_above_its_cap(options: dict[str, object], id: str) -> None:
    with override_settings(PUBSUBPULL=options):
        (error,) = check_settings()
    assert error.id == f"pubsubpull.{id}" and "is above" in error.msg and error.hint


def test_numbers_accept_their_range() -> None:
    options = {
        "MAX_FAILURES": 1,
        "RETRY_BASE": 0.5,
        "RETRY_CAP": 0.5,
        "DELIVERY_TIMEOUT": 0.1,
        "MAX_WAIT": 0,
        "SWEEP_INTERVAL": 1,
        "PAGE_SIZE": 5,
        "MAX_PAGE_SIZE": 5,
        "EVENTS": ("billing.invoice",),
    }
    with override_settings(PUBSUBPULL=options):
        assert check_settings() == []


@pytest.mark.parametrize(
    "schedule",
    [
        "5",
        5,
        None,
        {"first": 5},
        [1, -1],
        [1, "2"],
        [True],
        [math.inf],
        [math.nan],
        [30 * 24 * 3600 + 1],
    ],
)
def test_e022_unusable_retry_schedule(schedule: object) -> None:
    with override_settings(PUBSUBPULL={"RETRY_SCHEDULE": schedule}):
        (error,) = check_settings()
    assert error.id == "pubsubpull.E022" and repr(schedule) in error.msg
    assert "RETRY_SCHEDULE" in error.msg and "27 hours" in str(error.hint)


@pytest.mark.parametrize("schedule", [[], [0], (0, 5.5), [30 * 24 * 3600]])
def test_retry_schedule_accepts_delays_from_0_to_30_days(schedule: object) -> None:
    with override_settings(PUBSUBPULL={"RETRY_SCHEDULE": schedule}):
        assert check_settings() == [] and check_deprecated_settings() == []


def test_w002_old_retry_keys_are_deprecated_with_the_same_schedule_in_the_hint() -> None:
    assert check_deprecated_settings() == []
    with override_settings(PUBSUBPULL={"MAX_FAILURES": 3, "RETRY_BASE": 2}):
        warnings = check_deprecated_settings()
        assert check_settings() == []  # still valid settings
    assert [(w.id, w.level) for w in warnings] == [("pubsubpull.W002", checks.WARNING)] * 2
    assert "'MAX_FAILURES'" in warnings[0].msg and "'RETRY_BASE'" in warnings[1].msg
    assert "still works" in warnings[0].msg
    assert "RETRY_SCHEDULE" in str(warnings[0].hint) and "[2.0, 4.0]" in str(warnings[0].hint)
    with override_settings(PUBSUBPULL={"RETRY_CAP": 5, "RETRY_SCHEDULE": [1]}):
        (warning,) = check_deprecated_settings()
    assert warning.id == "pubsubpull.W002" and "ignored" in warning.msg


class Elsewhere:
    """A database router sending one app's models to another database."""

    def __init__(self, app_label: str, migrate: bool = True) -> None:
        self.app_label, self.migrate = app_label, migrate

    def db_for_write(self, model: type[Model], **hints: object) -> str | None:
        return "other" if model._meta.app_label == self.app_label and self.migrate else None

    def allow_migrate(self, db: str, app_label: str, **hints: object) -> bool | None:
        return self.migrate if app_label == self.app_label else None


@pytest.mark.parametrize(
    ("router", "label", "where"),
    [
        (Elsewhere("shop"), "shop.customer", "written to 'other'"),
        (Elsewhere("pubsubpull"), "pubsubpull.change", "written to 'other'"),
        (Elsewhere("pubsubpull", migrate=False), "pubsubpull.change", "not migrated"),
    ],
)
def test_e021_tables_routed_away_from_the_default_database(
    router: Elsewhere, label: str, where: str
) -> None:
    with override_settings(DATABASE_ROUTERS=[router]):
        errors = check_routers()
    assert {e.id for e in errors} == {"pubsubpull.E021"}
    (error,) = [e for e in errors if label in e.msg]
    assert where in error.msg and "default database only" in error.msg and error.hint


def test_routers_keeping_pubsubpull_in_the_default_database_pass() -> None:
    with override_settings(DATABASE_ROUTERS=[Elsewhere("sessions")]):
        assert check_routers() == []


@pytest.mark.parametrize("value", [0, 0.5, "60", None, True])
def test_an_unusable_sweep_interval_does_not_stop_the_worker_from_starting(
    value: object,
) -> None:
    """The sweep's schedule is read when tasks.py is imported, before E019 can report the
    setting: it falls back to the default instead of raising."""
    from pubsubpull import tasks

    assert tasks._cron(value) == tasks._cron(conf.DEFAULTS["SWEEP_INTERVAL"])
    assert tasks._cron(30) == "* * * * * */30" and tasks._cron(120) == "*/2 * * * *"
