"""Keeping RemoteCustomer current from another service's changes (the demo's subscriber)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from pubsubpull.webhooks import ReceiverView
from test_project.shop.models import RemoteCustomer

FIELDS = ("name", "email", "active")


def apply(changes: list[dict[str, Any]]) -> int:
    """Apply customer changes in order, each only if newer (``seq``) than the row's."""
    applied = 0
    with transaction.atomic():
        for change in changes:
            if change["model"] != "shop.customer" or change["pk"] is None:
                continue
            row, _ = RemoteCustomer.objects.select_for_update().get_or_create(id=int(change["pk"]))
            if change["seq"] <= row.seq:
                continue  # an older version of the row: already superseded
            row.seq = change["seq"]
            row.deleted = change["op"] == "delete"
            for field in FIELDS:
                if change["new"] and field in change["new"]:
                    setattr(row, field, change["new"][field])
            row.save()
            applied += 1
    return applied


class CustomerWebhook(ReceiverView):
    """Receives the publisher's customer changes (HTTP PUT, Standard Webhooks signed)."""

    def get_secret(self, request: Any) -> str:
        return str(getattr(settings, "DEMO_WEBHOOK_SECRET", ""))

    def handle(self, changes: list[dict[str, Any]], payload: dict[str, Any]) -> None:
        apply(changes)
