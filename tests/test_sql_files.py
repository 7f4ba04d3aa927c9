"""SQL files: each used exactly where it belongs, and what migrations applied frozen.

``pubsubpull/sql/migrations/NNNN_name.sql`` is applied by exactly one migration, the one
numbered NNNN, and never edited once written (a change is a new file and a new migration:
a database migrated long ago must have the same SQL as a new one). ``pubsubpull/sql/*.sql``
(run-time queries and per-table capture templates) are each loaded by code by exact name.
"""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files
from pathlib import Path

from pubsubpull.sql import load

PACKAGE = Path(str(files("pubsubpull")))
MIGRATION_SQL = PACKAGE / "sql" / "migrations"

# sha256 of every migration SQL file. A new file adds a line; a changed line means a file
# that migrations already applied was edited: write a new file and a new migration.
FROZEN = {
    "0001_save_request.sql": "6497c47316a18c610f32c1c0b7cb83ce8c7466b00de3accaf14bed8b76420ab4",
    "0003_change_json.sql": "98819007e7f55c655e59fc6b6fa474e5595fb1074acf0c6edb6938a41a5adbfa",
    "0004_wake_dispatcher.sql": (
        "765dd371a88a395e8889fc6bad0ee336902ded2971c35615dd018373492d62db"
    ),
    "0006_drop_wake_dispatcher.sql": (
        "480103d929f1b4b904b5c0fdf4f9bdd6a38ef2fb192e56f2e919f6083668056e"
    ),
    "0013_change_created_brin.sql": (
        "2669428ac3e5966b86fd573465eece47ef4618088abf34f5dc8ca7bd248a48d1"
    ),
    "0015_change_event_index.sql": (
        "a5d1f346434bea215fcbe9c6957e88d0a550a7672526b2e34a3d63bbfd8fd8d7"
    ),
    "0015_change_topic_index.sql": (
        "22963eb57a8003909654aea585b2e11bedcbf51989380ae52abcc57cb2fbe7fc"
    ),
    "0016_change_json_compact.sql": (
        "dd6f3a895cb6b0baf0ad4b051a436a2b06fdef39ec3aa8492f0e60e89a79bc88"
    ),
    "0017_change_request_constraint.sql": (
        "80ba43f795bd44834fdfa685900c62300fd266ee1441f70668ad226d8a61f9e9"
    ),
    "0017_change_request_full_index.sql": (
        "b12981373b130df8da31c11197c600aaf4e6058defadec3a682e032919fea784"
    ),
}


def code(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.rglob("*.py")))


def test_every_runtime_sql_file_is_loaded_by_exact_name_and_every_name_exists() -> None:
    python = code(PACKAGE)
    loaded = set(re.findall(r"\b(?:load|render)\(\s*\"([A-Za-z0-9_]+)\"", python))
    present = {p.stem for p in (PACKAGE / "sql").glob("*.sql")}
    assert loaded - present == set(), "loaded but missing"
    assert present - loaded == set(), "SQL files no code loads"


def test_runtime_sql_reaches_the_database_without_comments() -> None:
    # psycopg fills %(name)s placeholders inside comments too, and a value with a line
    # break ends a comment: load() drops comment lines, so none may follow code on a line
    for path in sorted((PACKAGE / "sql").glob("*.sql")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.lstrip().startswith("--"):
                assert "--" not in line, f"{path.name}:{number}: a comment after code"
        assert "--" not in load(path.stem), path.name


def test_every_migration_sql_file_is_applied_by_exactly_one_migration_of_its_number() -> None:
    references: dict[str, list[str]] = {}
    for migration in sorted((PACKAGE / "migrations").glob("0*.py")):
        for name in re.findall(r"\bmigration_sql\(\s*\"([A-Za-z0-9_]+)\"", migration.read_text()):
            references.setdefault(name, []).append(migration.stem)
    present = {p.stem for p in MIGRATION_SQL.glob("*.sql")}
    assert set(references) == present
    for name, migrations in references.items():
        assert len(migrations) == 1, f"{name}.sql is applied by {migrations}"
        assert migrations[0][:4] == name[:4], f"{name}.sql is applied by {migrations[0]}"
    assert not re.search(r"\bload\(", code(PACKAGE / "migrations")), "migrations load runtime SQL"


def test_migration_sql_files_are_frozen() -> None:
    hashes = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in MIGRATION_SQL.glob("*.sql")
    }
    assert set(hashes) == set(FROZEN), (
        "a migration SQL file was added or removed: list it in FROZEN"
    )
    for name, digest in FROZEN.items():
        assert hashes[name] == digest, (
            f"{name} changed after migrations applied it: restore it, and put the change in "
            "a new numbered file applied by a new migration"
        )
