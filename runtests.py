#!/usr/bin/env python
"""Run the test suite: ``python runtests.py [pytest arguments]``.

Uses ``DATABASE_URL`` when set; otherwise starts an embedded PostgreSQL (pgserver)
with its data in a temporary folder, removed at exit.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "test_project.settings")
    if not os.environ.get("DATABASE_URL"):
        from test_project.database import embedded_url

        folder = Path(tempfile.mkdtemp(prefix="pubsubpull-pg-"))
        os.environ["DATABASE_URL"] = embedded_url(folder, cleanup_mode="delete")
        print(f"embedded PostgreSQL in {folder}", flush=True)
    import pytest

    return int(pytest.main(argv))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
