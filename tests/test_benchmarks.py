"""The benchmark harness keeps working: ``python -m benchmarks --quick --dry-run`` runs clean.

No timings are asserted: benchmarks are not tests. The peers the benchmarks compare against
come with ``pip install -e . --group bench``; without them this test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers

pytest.importorskip("pghistory")
pytest.importorskip("rest_framework")

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = (
    "## Capture cost",
    "## Delivery",
    "## Broker sinks",
    "## Pull",
    "## Memory",
    "## Admin",
)


@pytest.mark.slow
@pytest.mark.django_db
def test_dry_run_writes_every_section(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    env = {
        **os.environ,
        # The same server as the tests; the benchmarks create their own database there.
        "DATABASE_URL": helpers.current_database_url(),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the runner sets benchmarks.settings itself
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--dry-run", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = output.read_text(encoding="utf-8")
    assert report.startswith("# Benchmarks")
    for title in SECTIONS:
        assert f"\n{title}\n" in report, f"{title!r} missing from the report"
    assert ": failed" not in report
    assert "PostgreSQL: " in report


def test_only_replaces_the_sections_it_ran() -> None:
    """``--only`` keeps the other sections of BENCHMARKS.md as the earlier run wrote them."""
    from benchmarks.__main__ import merge

    earlier = (
        "# Benchmarks\n\n- Run: full\n\n## Pull\n\nold pull\n\n## Memory\n\nold\n\n"
        "_Total run time: 9 s._\n"
    )
    merged = merge(earlier, ["## Pull\n\nnew pull", "## Admin\n\nnew"], "- Sections rerun: x")
    assert merged == (
        "# Benchmarks\n\n- Run: full\n- Sections rerun: x\n\n## Pull\n\nnew pull\n\n"
        "## Memory\n\nold\n\n## Admin\n\nnew\n\n_Total run time: 9 s._\n"
    )
