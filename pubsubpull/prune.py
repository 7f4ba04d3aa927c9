"""Removing old changes without losing any a subscriber has not received."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction

from .models import Delivery, Subscription
from .positions import Position
from .sql import load


@dataclass(frozen=True)
class Pruned:
    changes: int
    requests: int
    deliveries: int
    kept_after: Position | None  # the smallest subscription cursor that bounded it


def prune(before: datetime) -> Pruned:
    """Delete changes, requests and delivery attempts older than ``before``.

    A change newer than the cursor of any subscription that is not disabled is kept,
    whatever its age: paused and failing subscriptions resume from their cursor.
    """
    cursors = Subscription.objects.exclude(status=Subscription.Status.DISABLED).values_list(
        "cursor", flat=True
    )
    keep = min((Position.parse(c) for c in cursors), default=None)
    params = {
        "before": before,
        "keep_txid": str(keep.txid) if keep else None,
        "keep_id": keep.id if keep else None,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(load("prune_changes"), params)
        changes = cursor.rowcount
        cursor.execute(load("prune_requests"), {"before": before})
        requests = cursor.rowcount
        deliveries, _ = Delivery.objects.filter(created__lt=before).delete()
    return Pruned(changes, requests, deliveries, keep)
