"""Access to the SQL files in ``pubsubpull/sql/``."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def load(name: str) -> str:
    """The text of ``pubsubpull/sql/<name>.sql``."""
    return files("pubsubpull").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def render(name: str, **values: str) -> str:
    """``load(name)`` with each ``{{key}}`` replaced by an already quoted SQL value."""
    text = load(name)
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise ValueError(f"{name}.sql has a placeholder with no value")
    return text
