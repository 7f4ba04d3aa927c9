"""Topic patterns: dot-separated words, ``*`` matches one word, ``#`` zero or more (AMQP)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[A-Za-z0-9_\-]+")


class InvalidPattern(ValueError):
    """A topic pattern that is not dot-separated words, ``*`` and ``#``."""


def validate(pattern: str) -> str:
    """The pattern, or :class:`InvalidPattern` saying what is wrong with it."""
    if not pattern:
        raise InvalidPattern("a topic pattern may not be empty")
    for word in pattern.split("."):
        if word not in ("*", "#") and not _WORD.fullmatch(word):
            raise InvalidPattern(
                f"{pattern!r}: each dot-separated word must be letters, digits, _ or -, "
                "or * (one word) or # (zero or more words)"
            )
    return pattern


def to_regex(pattern: str) -> str:
    """A PostgreSQL regular expression matching ``'.' || topic`` for this pattern.

    Prefixing the topic with a dot makes every word ``\\.word``, so ``#`` is simply
    ``(\\.[^.]+)*`` wherever it stands.
    """
    parts = []
    for word in validate(pattern).split("."):
        if word == "#":
            parts.append(r"(\.[^.]+)*")
        elif word == "*":
            parts.append(r"\.[^.]+")
        else:
            parts.append(r"\." + re.escape(word))
    return "^" + "".join(parts) + "$"


def parse(value: str | Iterable[str] | None) -> list[str]:
    """Patterns from a comma-separated string or a list; [] means all topics."""
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [validate(item.strip()) for item in items]


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` (the same rule the SQL applies)."""
    return re.match(to_regex(pattern), "." + topic) is not None
