"""Prometheus metrics (``pip install "pubsubpull[metrics]"``, prometheus_client).

Counters and the delivery histogram are counted where things happen (every function here
is a no-op without prometheus_client); gauges are computed when scraped, with cheap
queries (counts capped, estimates, no JSON built for a count). Labels stay bounded: a
subscription is ``owner/name``, an endpoint the view's name; never a pk or a topic.

Workers count deliveries in their own processes: to scrape them through the web
process's ``GET <pubsubpull>/metrics``, run both with ``PROMETHEUS_MULTIPROC_DIR`` set to
the same empty directory (prometheus_client's multiprocess mode, as django-prometheus).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Subscription

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the [metrics] extra is optional
    prometheus_client = None  # type: ignore[assignment]

AVAILABLE = prometheus_client is not None
INSTALL = 'metrics need prometheus_client: pip install "pubsubpull[metrics]"'


def subscription_label(subscription: Subscription) -> str:
    """``owner/name`` (``local/name`` for local subscribers): bounded, never a pk."""
    owner = subscription.owner.get_username() if subscription.owner else "local"
    return f"{owner}/{subscription.name}"


if AVAILABLE:
    DELIVERIES = prometheus_client.Counter(
        "pubsubpull_deliveries",
        "Delivery attempts, by subscription and outcome (ok, failed).",
        ["subscription", "outcome"],
    )
    DELIVERY_DURATION = prometheus_client.Histogram(
        "pubsubpull_delivery_duration_seconds",
        "Time of one delivery attempt, all included.",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    DELIVERED_CHANGES = prometheus_client.Counter(
        "pubsubpull_delivered_changes",
        "Changes acknowledged by a subscription's target (2xx).",
        ["subscription"],
    )
    PULL_REQUESTS = prometheus_client.Counter(
        "pubsubpull_pull_requests",
        "Requests to the pull and subscription API, by endpoint and HTTP status.",
        ["endpoint", "status"],
    )


def delivery_attempt(subscription: Subscription, ok: bool, duration: timedelta, count: int) -> None:
    """Count one delivery attempt of ``count`` changes."""
    if not AVAILABLE:
        return
    label = subscription_label(subscription)
    DELIVERIES.labels(label, "ok" if ok else "failed").inc()
    DELIVERY_DURATION.observe(duration.total_seconds())
    if ok and count:
        DELIVERED_CHANGES.labels(label).inc(count)


def pull_request(endpoint: str, status: int) -> None:
    """Count one request to the API."""
    if AVAILABLE:
        PULL_REQUESTS.labels(endpoint, str(status)).inc()


class StateCollector:
    """Gauges read from the database at scrape time."""

    LAG = "pubsubpull_subscription_lag_changes"
    LAG_SECONDS = "pubsubpull_subscription_lag_seconds"
    HORIZON = "pubsubpull_horizon_age_seconds"
    LOG_ROWS = "pubsubpull_change_log_rows"

    def describe(self) -> Iterator[Any]:
        """The gauges' names, so that registering queries nothing."""
        yield GaugeMetricFamily(self.LAG, "", labels=["subscription"])
        yield GaugeMetricFamily(self.LAG_SECONDS, "", labels=["subscription"])
        yield GaugeMetricFamily(self.HORIZON, "")
        yield GaugeMetricFamily(self.LOG_ROWS, "")

    def collect(self) -> Iterator[Any]:
        from django.db import connection

        from . import subscriptions
        from .models import Subscription
        from .sql import load

        lag = GaugeMetricFamily(
            self.LAG,
            f"Changes visible and not yet delivered, counted up to {subscriptions.LAG_CAP}.",
            labels=["subscription"],
        )
        age = GaugeMetricFamily(
            self.LAG_SECONDS,
            "Age of the oldest change not yet delivered (0 when caught up).",
            labels=["subscription"],
        )
        now = time.time()
        active = Subscription.objects.select_related("owner").exclude(
            status=Subscription.Status.DISABLED
        )
        for subscription in active:
            label = subscription_label(subscription)
            count = subscriptions.lag(subscription)
            if count is not None:
                lag.add_metric([label], count)
            oldest = subscriptions.oldest_pending(subscription) if count else None
            age.add_metric([label], now - oldest.timestamp() if oldest else 0.0)
        yield lag
        yield age
        with connection.cursor() as cursor:
            cursor.execute(load("horizon_holder"))
            holder = cursor.fetchone()
            cursor.execute(load("row_estimates"), {"tables": ["pubsubpull_change"]})
            estimate = cursor.fetchone()
        yield GaugeMetricFamily(
            self.HORIZON,
            "How long the oldest open writing transaction has held the safe horizon back.",
            value=holder[1].total_seconds() if holder else 0.0,
        )
        rows = estimate[1] if estimate and estimate[1] is not None else -1
        yield GaugeMetricFamily(
            self.LOG_ROWS, "PostgreSQL's estimate of the change log's rows (-1: unknown).", rows
        )


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(StateCollector())
    else:
        registry = prometheus_client.REGISTRY
    return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST


if AVAILABLE and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # In the default registry, so django-prometheus' /metrics shows the gauges too.
    prometheus_client.REGISTRY.register(StateCollector())
