"""``python demo.py`` runs the two-service demo to the end by itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from tests.helpers import current_database_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.django_db
def test_demo_exits_0_with_both_copies_matching() -> None:
    # the demo creates its own two databases on the test server
    url = current_database_url().replace(f"/{connection.settings_dict['NAME']}", "/postgres", 1)
    result = subprocess.run(
        [sys.executable, "demo.py"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "subscriber cache: customer" in result.stdout
    assert "Both copies match the publisher. Done." in result.stdout
