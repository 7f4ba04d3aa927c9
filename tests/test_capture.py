"""Capture: every kind of write to a tracked table lands in the change log."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from pubsubpull.models import Change, ImmutableError
from test_project.shop.models import Customer, Note, Order, Product
from tests.helpers import all_changes, raw_change_text

pytestmark = pytest.mark.django_db


def test_orm_create_update_delete() -> None:
    customer = Customer.objects.create(name="Ann", email="ann@example.com", password="pw-1")
    customer.name = "Anna"
    customer.save()
    pk = customer.pk
    customer.delete()

    insert, update, delete = all_changes()
    assert [c.topic for c in (insert, update, delete)] == [
        "shop.customer.insert",
        "shop.customer.update",
        "shop.customer.delete",
    ]
    assert {c.model for c in (insert, update, delete)} == {"shop.customer"}
    assert {c.table for c in (insert, update, delete)} == {"shop_customer"}
    assert [c.op for c in (insert, update, delete)] == ["insert", "update", "delete"]
    assert {c.object_pk for c in (insert, update, delete)} == {str(pk)}
    assert insert.old is None
    assert insert.new == {"id": pk, "name": "Ann", "email": "ann@example.com", "active": True}
    assert update.old["name"] == "Ann" and update.new["name"] == "Anna"
    assert update.fields == ["name"]
    assert delete.old["name"] == "Anna" and delete.new is None


def test_change_records_transaction_id_and_time() -> None:
    with transaction.atomic():
        Customer.objects.create(name="a")
        Customer.objects.create(name="b")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id()::text")
            txid = int(cursor.fetchone()[0])
    first, second = all_changes()
    assert first.txid == second.txid == txid
    assert first.created is not None
    assert second.id > first.id


def test_foreign_key_is_its_column() -> None:
    customer = Customer.objects.create(name="c")
    order = Order.objects.create(customer=customer, total=Decimal("12.50"))
    change = Change.objects.get(topic="shop.order.insert")
    assert change.new["customer_id"] == customer.pk
    assert change.new["total"] == 12.5
    assert change.object_pk == str(order.pk)


def test_bulk_create_of_10000_rows_gives_10000_changes() -> None:
    Product.objects.bulk_create(
        Product(sku=f"sku-{i}", name=f"product {i}", price=Decimal(i)) for i in range(10_000)
    )
    assert Change.objects.filter(topic="shop.product.insert").count() == 10_000
    assert set(Change.objects.values_list("object_pk", flat=True)) == {
        str(pk) for pk in Product.objects.values_list("pk", flat=True)
    }


def test_triggers_are_statement_level_with_transition_tables() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname, tgtype & 1 AS row_level, tgoldtable, tgnewtable FROM pg_trigger"
            " WHERE tgrelid = 'shop_customer'::regclass AND tgname LIKE 'pubsubpull%%'"
            " ORDER BY tgname"
        )
        rows = cursor.fetchall()
    assert [r[0] for r in rows] == [
        "pubsubpull_delete",
        "pubsubpull_insert",
        "pubsubpull_truncate",
        "pubsubpull_update",
    ]
    assert all(r[1] == 0 for r in rows)  # FOR EACH STATEMENT
    assert {r[0]: (r[2], r[3]) for r in rows} == {
        "pubsubpull_delete": ("old_rows", None),
        "pubsubpull_insert": (None, "new_rows"),
        "pubsubpull_truncate": (None, None),
        "pubsubpull_update": ("old_rows", "new_rows"),
    }


def test_queryset_update_and_delete_are_captured_per_row() -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(50))
    Customer.objects.filter(name__in=["c1", "c2", "c3"]).update(active=False)
    updates = Change.objects.filter(op="update")
    assert sorted(c.new["name"] for c in updates) == ["c1", "c2", "c3"]
    assert all(c.fields == ["active"] for c in updates)
    Customer.objects.filter(active=False).delete()
    assert sorted(c.old["name"] for c in Change.objects.filter(op="delete")) == ["c1", "c2", "c3"]


def test_raw_sql_through_a_cursor() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO shop_customer (name, email, password, active)"
            " VALUES ('raw', '', 'raw-secret', true), ('raw2', '', '', true)"
        )
        cursor.execute("UPDATE shop_customer SET email = 'r@example.com' WHERE name = 'raw'")
        cursor.execute("DELETE FROM shop_customer WHERE name = 'raw2'")
    assert [c.topic for c in all_changes()] == [
        "shop.customer.insert",
        "shop.customer.insert",
        "shop.customer.update",
        "shop.customer.delete",
    ]
    assert "raw-secret" not in raw_change_text()


def test_truncate() -> None:
    Customer.objects.create(name="t")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE shop_order, shop_customer")
    truncates = Change.objects.filter(op="truncate").order_by("topic")
    assert [(c.topic, c.object_pk, c.old, c.new) for c in truncates] == [
        ("shop.customer.truncate", None, None, None),
        ("shop.order.truncate", None, None, None),
    ]


def test_primary_key_change_is_a_delete_and_an_insert() -> None:
    customer = Customer.objects.create(name="moved")
    Customer.objects.filter(pk=customer.pk).update(id=customer.pk + 1000)
    delete, insert = all_changes()[1:]
    assert (delete.op, delete.object_pk) == ("delete", str(customer.pk))
    assert (insert.op, insert.object_pk) == ("insert", str(customer.pk + 1000))


def test_rolled_back_transaction_leaves_no_change() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        Customer.objects.create(name="gone")
        raise RuntimeError
    assert all_changes() == []


def test_excluded_column_is_never_stored() -> None:
    customer = Customer.objects.create(name="secretive", password="hunter2-create")
    customer.password = "hunter2-update"
    customer.name = "renamed"
    customer.save()
    Customer.objects.all().delete()
    bob = User.objects.create_user("bob", password="bob-password")
    text = raw_change_text()
    assert "hunter2" not in text
    assert "password" not in text  # neither the key
    assert bob.password.split("$")[-1] not in text  # nor Django's hash
    assert Change.objects.filter(topic="auth.user.insert").count() == 1


def test_update_of_nothing_but_excluded_columns_is_not_recorded() -> None:
    customer = Customer.objects.create(name="same")
    Customer.objects.filter(pk=customer.pk).update(password="changed")
    Customer.objects.filter(pk=customer.pk).update(name="same")  # no-op update
    assert [c.op for c in all_changes()] == ["insert"]


def test_untracked_model_records_nothing() -> None:
    Note.objects.create(text="hello")
    assert all_changes() == []


def test_changes_are_immutable() -> None:
    Customer.objects.create(name="x")
    change = Change.objects.get()
    change.topic = "rewritten"
    with pytest.raises(ImmutableError, match="immutable"):
        change.save()
    with pytest.raises(ImmutableError, match="immutable"):
        change.delete()
    assert Change.objects.get().topic == "shop.customer.insert"
