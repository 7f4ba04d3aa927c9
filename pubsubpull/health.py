"""Is pubsubpull working here? One cheap look, for ``manage.py pubsubpull status --json``
and the django-health-check backend (``pubsubpull.health_check``).

Unhealthy when a tracked table's capture trigger is missing or stale, an open transaction
has held the safe horizon back longer than :data:`HORIZON_LIMIT` (subscribers and pulls
see nothing newer meanwhile), active subscriptions exist but no worker has beaten for
:data:`WORKER_LIMIT`, or a subscription is failing or disabled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django.db import connection

from . import capture
from .sql import load

HORIZON_LIMIT = 300.0  # seconds an open transaction may hold the horizon back
WORKER_LIMIT = 60.0  # seconds without a worker heartbeat while subscriptions wait


@dataclass(frozen=True)
class Health:
    stale_triggers: list[str]  # tracked tables whose trigger is missing or out of date
    horizon_age: float | None  # seconds the oldest open writing transaction has been open
    horizon_pid: int | None  # and its backend
    worker_seen: float | None  # seconds since a worker's last heartbeat; None: none known
    active_subscriptions: int
    failing_subscriptions: list[str]  # "owner/name" (or "local/name") failing or disabled

    def problems(self, named: bool = True) -> list[str]:
        """What is wrong, one sentence each; empty when healthy. ``named=False`` leaves
        out table, subscription and backend names (for public health endpoints)."""
        problems = []
        if self.stale_triggers:
            where = (
                ", ".join(self.stale_triggers) if named else f"{len(self.stale_triggers)} tables"
            )
            problems.append(
                f"capture triggers missing or stale on {where}: "
                "run manage.py pubsubpull triggers install (or migrate)"
            )
        if self.horizon_age is not None and self.horizon_age > HORIZON_LIMIT:
            who = f"backend {self.horizon_pid}" if named else "a transaction"
            problems.append(
                f"{who} has held the horizon back for {self.horizon_age:.0f} s: "
                "changes after it are not visible yet"
            )
        if self.active_subscriptions and (
            self.worker_seen is None or self.worker_seen > WORKER_LIMIT
        ):
            seen = "never" if self.worker_seen is None else f"{self.worker_seen:.0f} s ago"
            problems.append(
                f"{self.active_subscriptions} active subscriptions but no worker heartbeat "
                f"(last: {seen}): run manage.py procrastinate worker"
            )
        if self.failing_subscriptions:
            which = (
                ", ".join(self.failing_subscriptions)
                if named
                else str(len(self.failing_subscriptions))
            )
            problems.append(f"subscriptions failing or disabled: {which}")
        return problems

    @property
    def healthy(self) -> bool:
        return not self.problems()

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy, "problems": self.problems()}


def check() -> Health:
    """Look at the triggers, the horizon, the workers and the subscriptions."""
    from .models import Subscription

    stale = [s.table for s in capture.status("default") if s.state in ("missing", "stale")]
    with connection.cursor() as cursor:
        cursor.execute(load("horizon_holder"))
        holder = cursor.fetchone()
        cursor.execute(load("worker_heartbeat"))
        (worker_seen,) = cursor.fetchone()
    failing = [
        f"{subscription.owner or 'local'}/{subscription.name}"
        for subscription in Subscription.objects.select_related("owner").filter(
            status__in=[Subscription.Status.FAILING, Subscription.Status.DISABLED]
        )
    ]
    return Health(
        stale_triggers=[name for name in stale if name],
        horizon_age=None if holder is None else holder[1].total_seconds(),
        horizon_pid=None if holder is None else int(holder[0]),
        worker_seen=worker_seen,
        active_subscriptions=Subscription.objects.filter(status=Subscription.Status.ACTIVE).count(),
        failing_subscriptions=failing,
    )
