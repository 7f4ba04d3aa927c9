"""Every SQL file is used, and only from where SQL belongs."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGE = Path(str(files("pubsubpull")))


def test_every_sql_file_is_used_by_code_or_a_migration() -> None:
    python = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    for sql_file in (PACKAGE / "sql").glob("*.sql"):
        name = sql_file.stem
        assert f'"{name}"' in python, f"{sql_file.name} is not loaded anywhere"
