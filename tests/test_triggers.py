"""``manage.py pubsubpull triggers`` and keeping triggers current after ``migrate``."""

from __future__ import annotations

import io
import logging

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from pubsubpull import capture
from test_project.shop.models import Customer, Note
from tests.helpers import all_changes, raw_change_text

pytestmark = pytest.mark.django_db

TRACK = {"auth.user": {"exclude": ["password"]}}


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("pubsubpull", "triggers", *args, stdout=out)
    return out.getvalue()


def states() -> dict[str, str]:
    return {s.table or s.function: s.state for s in capture.status()}


def test_all_tracked_tables_are_current_after_migrate() -> None:
    assert states() == {
        "auth_user": "current",
        "shop_customer": "current",
        "shop_order": "current",
        "shop_product": "current",
    }
    assert "current   shop_customer (shop.customer)" in run("check")


def test_ls_lists_states() -> None:
    out = run("ls")
    assert "current   auth_user (auth.user)" in out
    assert "shop_note" not in out


def test_check_fails_naming_a_missing_trigger_then_install_fixes_it() -> None:
    run("uninstall")
    with pytest.raises(CommandError, match="shop_customer \\(missing\\)") as error:
        run("check")
    assert error.value.returncode == 1
    Customer.objects.create(name="not captured")
    assert all_changes() == []

    assert "installed shop_customer" in run("install")
    assert "installed" not in run("install")  # idempotent: nothing to do
    run("check")
    Customer.objects.create(name="captured")
    assert [c.new["name"] for c in all_changes()] == ["captured"]


def test_changed_exclude_makes_trigger_stale_until_migrate() -> None:
    with override_settings(PUBSUBPULL={"TRACK": {**TRACK, "shop.customer": {"exclude": []}}}):
        with pytest.raises(CommandError, match="shop_customer \\(stale\\)"):
            run("check")
        call_command("migrate", verbosity=0)
        run("check")
        Customer.objects.create(name="open", password="now-recorded")
        assert "now-recorded" in raw_change_text()


def test_newly_tracked_and_untracked_models_follow_migrate() -> None:
    with override_settings(PUBSUBPULL={"TRACK": {**TRACK, "shop.note": {}}}):
        assert states()["shop_note"] == "missing"
        call_command("migrate", verbosity=0)
        assert states()["shop_note"] == "current"
        Note.objects.create(text="tracked now")
        assert [c.topic for c in all_changes()] == ["shop.note.insert"]
    # shop.note is no longer tracked: its trigger is a leftover until migrate drops it
    assert states()["shop_note"] == "orphaned"
    with pytest.raises(CommandError, match="orphaned"):
        run("check")
    call_command("migrate", verbosity=0)
    assert "shop_note" not in states()
    Note.objects.create(text="untracked again")
    assert len(all_changes()) == 1


def test_long_table_names_get_a_valid_function_name() -> None:
    name = capture.function_name("t" * 63)
    assert len(name) <= 63 and name.startswith("pubsubpull_capture_")
    assert name != capture.function_name("t" * 62 + "u")


def test_installs_and_drops_are_logged_with_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pubsubpull.capture"):
        run("uninstall")
        run("install")
    dropped = [r for r in caplog.records if getattr(r, "function", None)]
    installed = [r for r in caplog.records if getattr(r, "table", None) == "shop_customer"]
    assert dropped and all(r.name == "pubsubpull.capture" for r in dropped)
    assert len(installed) == 1 and installed[0].was == "missing"  # type: ignore[attr-defined]
    assert installed[0].label == "shop.customer"  # type: ignore[attr-defined]
