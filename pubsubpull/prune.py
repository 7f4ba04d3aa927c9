"""Removing old changes without losing any a subscriber has not received: by hand
(``manage.py pubsubpull prune``) or by ``PUBSUBPULL["RETENTION"]`` in the worker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from . import conf
from .models import Subscription
from .positions import Position
from .sql import load

# Rows one retention transaction deletes: short transactions, short row locks, and the
# horizon held back only for the moment each takes.
RETENTION_BATCH = 10_000


@dataclass(frozen=True)
class Pruned:
    changes: int
    requests: int
    deliveries: int
    kept_after: Position | None  # the smallest subscription cursor that bounded it


def _kept_after() -> Position | None:
    """The smallest cursor of the subscriptions that expect changes (all but disabled):
    paused and failing ones resume from their cursor."""
    cursors = Subscription.objects.exclude(status=Subscription.Status.DISABLED).values_list(
        "cursor", flat=True
    )
    return min((Position.parse(c) for c in cursors), default=None)


def _delete(query: str, params: dict[str, Any], batch: int | None) -> int:
    """Run a prune query until it deletes fewer than ``batch`` rows (once when None),
    each run in a transaction of its own; returns the rows deleted."""
    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(query, {**params, "batch": batch})
            count = int(cursor.rowcount)
        deleted += count
        if batch is None or count < batch:
            return deleted


def prune(
    before: datetime | None = None,
    *,
    changes: datetime | None = None,
    requests: datetime | None = None,
    deliveries: datetime | None = None,
    batch: int | None = None,
) -> Pruned:
    """Delete changes, requests and delivery attempts older than ``before`` (or than the
    time given for each; one not given and without ``before`` is kept).

    A change newer than the cursor of any subscription that is not disabled is kept,
    whatever its age. With ``batch``, rows go at most that many per transaction.
    """
    changes, requests, deliveries = (t or before for t in (changes, requests, deliveries))
    keep = _kept_after()
    deleted = {"changes": 0, "requests": 0, "deliveries": 0}
    if changes is not None:
        params: dict[str, Any] = {
            "before": changes,
            "keep_txid": str(keep.txid) if keep else None,
            "keep_id": keep.id if keep else None,
        }
        deleted["changes"] = _delete(load("prune_changes"), params, batch)
    if requests is not None:
        deleted["requests"] = _delete(load("prune_requests"), {"before": requests}, batch)
    if deliveries is not None:
        deleted["deliveries"] = _delete(load("prune_deliveries"), {"before": deliveries}, batch)
    return Pruned(**deleted, kept_after=keep)


def apply_retention(now: datetime) -> Pruned | None:
    """``PUBSUBPULL["RETENTION"]`` applied at ``now``, in batches (None when it is off).
    Finished jobs are the task's to clean (``tasks.retention``)."""
    retention = conf.settings.RETENTION
    if not retention:
        return None
    cutoff = {key: now - conf.parse_duration(value) for key, value in retention.items()}
    return prune(
        changes=cutoff.get("changes"),
        requests=cutoff.get("requests"),
        deliveries=cutoff.get("deliveries"),
        batch=RETENTION_BATCH,
    )
