"""Admin: the change log and requests are browsable and read-only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from pubsubpull.models import Change, Request

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    admin = User.objects.create_superuser("root", password="root-password")
    client.force_login(admin)
    client.post("/shop/customers/", {"name": "Admin Seen"}, "application/json")
    return client


def test_change_changelist_has_filters_and_no_add(staff: Client) -> None:
    response = staff.get("/admin/pubsubpull/change/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "shop.customer.insert" in content
    for title in ("By op", "By model", "By topic", "By created"):
        assert title in content
    assert "/admin/pubsubpull/change/add/" not in content
    assert staff.get("/admin/pubsubpull/change/add/").status_code == 403
    assert staff.get("/admin/pubsubpull/change/?op__exact=insert").context["cl"].result_count
    filtered = staff.get("/admin/pubsubpull/change/?op__exact=delete")
    assert filtered.context["cl"].result_count == 0


def test_change_page_is_read_only(staff: Client) -> None:
    change = Change.objects.get(model="shop.customer")
    response = staff.get(f"/admin/pubsubpull/change/{change.pk}/change/")
    assert response.status_code == 200
    assert 'name="topic"' not in response.content.decode()  # no input fields
    deleted = staff.post(f"/admin/pubsubpull/change/{change.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    assert Change.objects.filter(pk=change.pk).exists()


def test_request_page_shows_its_changes(staff: Client) -> None:
    request = Request.objects.get()
    response = staff.get(f"/admin/pubsubpull/request/{request.pk}/change/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "/shop/customers/" in content
    assert "shop.customer.insert" in content
    assert staff.get("/admin/pubsubpull/request/").status_code == 200
