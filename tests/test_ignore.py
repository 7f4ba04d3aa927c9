"""Fields that do not trigger (issue 11 item 8): ``track(ignore=[...])`` and ``TRACK``."""

from __future__ import annotations

import pytest
from django.test import override_settings

import pubsubpull
from pubsubpull import capture
from pubsubpull.checks import check_tracked_models
from pubsubpull.models import Change
from test_project.shop.models import Customer, Note

pytestmark = pytest.mark.django_db

IGNORING_ACTIVE = {"shop.customer": {"exclude": ["password"], "ignore": ["active"]}}


def customer_changes() -> list[Change]:
    return list(Change.objects.filter(model="shop.customer").order_by("id"))


def test_an_update_of_ignored_fields_only_records_nothing() -> None:
    with override_settings(PUBSUBPULL={"TRACK": IGNORING_ACTIVE}):
        capture.install()  # the new capture function, rolled back with the test
        customer = Customer.objects.create(name="Ann")
        Customer.objects.filter(pk=customer.pk).update(active=False)
        assert [c.op for c in customer_changes()] == ["insert"]

        Customer.objects.filter(pk=customer.pk).update(active=True, name="Anna")
        insert, update = customer_changes()
        assert update.op == "update"
        assert update.old["active"] is False and update.new["active"] is True  # kept
        assert update.old["name"] == "Ann" and update.new["name"] == "Anna"
        assert "password" not in (update.new or {})  # exclude still applies
        Customer.objects.filter(pk=customer.pk).delete()
        assert customer_changes()[-1].op == "delete"  # deletes are never ignored


def test_without_ignore_the_same_update_is_recorded() -> None:
    customer = Customer.objects.create(name="Ann")
    Customer.objects.filter(pk=customer.pk).update(active=False)
    assert [c.op for c in customer_changes()] == ["insert", "update"]


def test_ignore_changes_the_capture_so_the_trigger_is_stale_until_installed() -> None:
    with override_settings(PUBSUBPULL={"TRACK": IGNORING_ACTIVE}):
        states = {s.table: s.state for s in capture.status()}
        assert states["shop_customer"] == "stale"


def test_unknown_ignored_field_is_e003() -> None:
    track = {"shop.customer": {"ignore": ["updated_at"]}}
    with override_settings(PUBSUBPULL={"TRACK": track}):
        errors = [e for e in check_tracked_models() if e.id == "pubsubpull.E003"]
    assert [e.msg for e in errors] == [
        "shop.customer ignores 'updated_at', which is not one of its fields."
    ]


@pytest.mark.parametrize("ignore", ["active", [1], None])
def test_ignore_that_is_not_a_list_of_names_makes_the_entry_unusable(ignore: object) -> None:
    from pubsubpull import conf

    with override_settings(PUBSUBPULL={"TRACK": {"shop.customer": {"ignore": ignore}}}):
        assert "shop.customer" not in conf.track()


def test_track_takes_ignore_and_refuses_a_string() -> None:
    from pubsubpull import registry

    try:
        assert pubsubpull.track(Note, ignore=["text"]) is Note
        assert registry.labels()["shop.note"] == registry.Options((), ("text",))
    finally:
        registry._registered.pop("shop.note", None)
        registry.tables.cache_clear()
    with pytest.raises(TypeError, match="lists of field names"):
        pubsubpull.track(Note, ignore="text")
    assert "shop.note" not in registry.labels()
