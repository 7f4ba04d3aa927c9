"""Settings of the benchmarks: the test project plus the peers and the benchmark models.

``python -m benchmarks`` points ``DATABASE_URL`` at its own fresh database before Django
reads these settings. A worker started by a benchmark may get ``PUBSUBPULL`` keys of its own
(e.g. a short ``DELIVERY_TIMEOUT``) as JSON in ``PUBSUBPULL_BENCH_SETTINGS``, and a server its
``CONN_MAX_AGE`` (seconds) in ``PUBSUBPULL_BENCH_CONN_MAX_AGE``.
"""

from __future__ import annotations

import json
import os

from test_project.settings import *  # noqa: F403
from test_project.settings import DATABASES, INSTALLED_APPS, PUBSUBPULL

INSTALLED_APPS = [
    *INSTALLED_APPS,
    "pgtrigger",
    "pghistory",
    "rest_framework",
    "benchmarks.benchapp",
]
ROOT_URLCONF = "benchmarks.urls"
DEBUG = False  # no query log: it would be measured too
PUBSUBPULL = {**PUBSUBPULL, **json.loads(os.environ.get("PUBSUBPULL_BENCH_SETTINGS") or "{}")}
if os.environ.get("PUBSUBPULL_BENCH_CONN_MAX_AGE"):
    DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ["PUBSUBPULL_BENCH_CONN_MAX_AGE"])
