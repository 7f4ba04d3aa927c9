"""A check for django-health-check 4 (``pip install "pubsubpull[health]"``)::

    path("health/", HealthCheckView.as_view(checks=[
        "health_check.checks.Database", "pubsubpull.health_check.Pubsubpull",
    ]))

It fails on the problems :func:`pubsubpull.health.check` finds, said without names
(health endpoints are often public): use ``manage.py pubsubpull status`` for the details.
"""

from __future__ import annotations

import dataclasses

from django.db import connection
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable

from . import health


@dataclasses.dataclass
class Pubsubpull(HealthCheck):
    """Capture triggers current, the horizon moving, a worker alive, no failing
    subscription."""

    def run(self) -> None:
        # run in a thread of django-health-check's: close what it opens there, as its own
        # Database check does
        with connection.temporary_connection():
            problems = health.check().problems(named=False)
        if problems:
            raise ServiceUnavailable("; ".join(problems))
