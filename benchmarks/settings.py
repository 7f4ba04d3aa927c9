"""Settings of the benchmarks: the test project plus the peers and the benchmark models.

``python -m benchmarks`` points ``DATABASE_URL`` at its own fresh database before Django
reads these settings.
"""

from __future__ import annotations

from test_project.settings import *  # noqa: F403
from test_project.settings import INSTALLED_APPS

INSTALLED_APPS = [
    *INSTALLED_APPS,
    "pgtrigger",
    "pghistory",
    "rest_framework",
    "benchmarks.benchapp",
]
ROOT_URLCONF = "benchmarks.urls"
DEBUG = False  # no query log: it would be measured too
