"""Health: ``manage.py pubsubpull status --json`` and the django-health-check check."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection

from pubsubpull import capture, health
from pubsubpull.health_check import Pubsubpull
from pubsubpull.models import Subscription
from tests.helpers import raw_connection

pytestmark = pytest.mark.django_db


def status() -> tuple[int, dict[str, Any]]:
    """``status --json``: its exit status and its JSON."""
    out = io.StringIO()
    try:
        call_command("pubsubpull", "status", "--json", stdout=out)
        code = 0
    except SystemExit as exit:
        code = int(exit.code or 0)
    return code, json.loads(out.getvalue())


def a_worker_beats() -> None:
    """What a running Procrastinate worker does: register, then beat."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT procrastinate_register_worker_v1()")


def subscribe(name: str, **fields: Any) -> Subscription:
    owner, _ = User.objects.get_or_create(username="subscriber")
    return Subscription.objects.create(
        owner=owner, name=name, target="https://hooks.example.com/", cursor="0-0", **fields
    )


def test_healthy_when_triggers_are_current_and_nothing_waits() -> None:
    code, body = status()
    assert code == 0 and body["healthy"] is True and body["problems"] == []
    assert body["stale_triggers"] == [] and body["failing_subscriptions"] == []


def test_a_missing_trigger_is_unhealthy_and_named() -> None:
    capture.uninstall("default")  # rolled back with the test's transaction
    code, body = status()
    assert code == 1 and body["healthy"] is False
    assert "shop_customer" in body["stale_triggers"]
    assert "triggers install" in body["problems"][0]


def test_active_subscriptions_need_a_worker_heartbeat() -> None:
    subscribe("waiting")
    code, body = status()
    assert code == 1 and body["active_subscriptions"] == 1
    assert "no worker heartbeat (last: never)" in body["problems"][0]
    a_worker_beats()
    code, body = status()
    assert code == 0 and body["worker_seen"] is not None and body["worker_seen"] < 60


def test_failing_and_disabled_subscriptions_are_unhealthy() -> None:
    subscribe("broken", status=Subscription.Status.FAILING)
    subscribe("gone", status=Subscription.Status.DISABLED)
    subscribe("resting", status=Subscription.Status.PAUSED)
    code, body = status()
    assert code == 1
    assert body["failing_subscriptions"] == ["subscriber/broken", "subscriber/gone"]


def test_a_transaction_holding_the_horizon_too_long_is_unhealthy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with raw_connection() as other:
        other.execute("SELECT pg_current_xact_id()")  # a transaction id: holds the horizon
        code, body = status()
        assert code == 0 and body["horizon_pid"] == other.info.backend_pid
        monkeypatch.setattr(health, "HORIZON_LIMIT", 0.0)
        code, body = status()
        assert code == 1 and f"backend {other.info.backend_pid}" in body["problems"][0]
        other.rollback()


def test_the_human_status_lists_problems_and_exits_0() -> None:
    subscribe("broken", status=Subscription.Status.FAILING)
    out = io.StringIO()
    call_command("pubsubpull", "status", stdout=out)
    assert "unhealthy: subscriptions failing or disabled: subscriber/broken" in out.getvalue()
    assert "workers   none seen" in out.getvalue()


@pytest.mark.django_db(transaction=True)  # the check runs in a thread of its own
def test_the_health_check_fails_without_naming_anything() -> None:
    result = asyncio.run(Pubsubpull().get_result())
    assert result.error is None
    subscribe("secret-customer-name", status=Subscription.Status.FAILING)
    result = asyncio.run(Pubsubpull().get_result())
    assert result.error is not None
    assert "subscriptions failing or disabled: 1" in str(result.error)
    assert "secret-customer-name" not in str(result.error)
    assert "subscriber" not in str(result.error)
