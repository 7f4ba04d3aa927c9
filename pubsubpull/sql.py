"""Access to the SQL files in ``pubsubpull/sql/``.

Two kinds, in two places: ``sql/migrations/NNNN_name.sql`` hold what a migration
installs (functions, triggers on pubsubpull's tables): each is applied by exactly one
migration and frozen once released, so a database migrated long ago and a new one get
the same SQL; a change is a new numbered file and a new migration (a function whose
signature changes gets a new, versioned name). ``sql/*.sql`` hold the queries run at run
time and the per-table capture templates installed after ``migrate``: code loads them,
so they may change with the code.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def load(name: str) -> str:
    """The text of ``pubsubpull/sql/<name>.sql`` without its comment lines.

    The comments stay in the files, never in what is run: psycopg fills ``%(name)s``
    placeholders wherever they stand (it does not parse SQL), and a value with a line break
    filled into a comment would end the comment and run as SQL (a subscriber's filter, a
    text primary key in ``?after=``).
    """
    text = files("pubsubpull").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("--")
    )


def migration_sql(name: str) -> str:
    """The text of ``pubsubpull/sql/migrations/<name>.sql``, for the one migration that
    applies it."""
    return (
        files("pubsubpull").joinpath("sql", "migrations", f"{name}.sql").read_text(encoding="utf-8")
    )


@cache  # same text for the same values: reads render their query on every call
def render(name: str, **values: str) -> str:
    """``load(name)`` with each ``{{key}}`` replaced by an already quoted SQL value."""
    text = load(name)
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise ValueError(f"{name}.sql has a placeholder with no value")
    return text
