"""Three models with the same columns, so one workload runs against each.

- :class:`Row`: untracked, the baseline.
- :class:`TrackedRow`: tracked by pubsubpull (statement-level triggers).
- :class:`HistoryRow`: tracked by django-pghistory (its default row-level triggers) with
  insert, update and delete events, so deletes compare too.
- :class:`TransitionRow`: untracked, with no-op statement triggers that only make PostgreSQL
  keep the transition tables (migration 0002): the part of capture cost that is not the
  capture function's own work.
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

import pghistory
from django.db import models

import pubsubpull

EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class RowFields(models.Model):
    name = models.CharField(max_length=100)
    email = models.CharField(max_length=100)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    active = models.BooleanField(default=True)
    created = models.DateTimeField()
    payload = models.JSONField(default=dict)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.name


class Row(RowFields):
    """Untracked: the baseline every tracked result is divided by."""


@pubsubpull.track
class TrackedRow(RowFields):
    """Tracked by pubsubpull."""


@pghistory.track(pghistory.InsertEvent(), pghistory.UpdateEvent(), pghistory.DeleteEvent())
class HistoryRow(RowFields):
    """Tracked by django-pghistory, the peer."""


class TransitionRow(RowFields):
    """Untracked, with no-op statement triggers referencing the transition tables."""


def sample(i: int) -> dict[str, Any]:
    """Field values of the ``i``-th benchmark row (deterministic, about 200 bytes as JSON)."""
    return {
        "name": f"customer {i}",
        "email": f"customer{i}@example.com",
        "amount": Decimal(i % 100_000) / 100,
        "active": i % 3 != 0,
        "created": EPOCH + datetime.timedelta(seconds=i),
        "payload": {"n": i, "tier": ("gold", "silver", "bronze")[i % 3], "tags": ["a", "b"]},
    }
