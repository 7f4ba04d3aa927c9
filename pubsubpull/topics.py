"""Topic patterns: dot-separated words, ``*`` matches one word, ``#`` zero or more (AMQP)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from . import conf

#: A word of a topic, as a regular expression.
WORD = "[A-Za-z0-9_-]+"
_WORD = re.compile(WORD)
_PATTERN_WORD = rf"({WORD}|\*|#)"  # a word, or a wildcard: * one word, # zero or more
#: One topic pattern, as a regular expression (what :func:`validate` accepts, less its
#: length limit).
PATTERN = rf"{_PATTERN_WORD}(\.{_PATTERN_WORD})*"
MAX_LENGTH = 255  # characters of one pattern


class InvalidPattern(ValueError):
    """A topic pattern that is not dot-separated words, ``*`` and ``#``."""


def validate(pattern: str) -> str:
    """The pattern, or :class:`InvalidPattern` saying what is wrong with it."""
    if not pattern:
        raise InvalidPattern("a topic pattern may not be empty")
    if len(pattern) > MAX_LENGTH:
        raise InvalidPattern(
            f"{pattern[:40]!r}...: a topic pattern has at most {MAX_LENGTH} characters"
        )
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
    return "^" + _regex_body(pattern) + "$"


def any_regex(patterns: Iterable[str]) -> str | None:
    """One regular expression matching ``'.' || topic`` for any of ``patterns`` (None
    for none). One expression, not one per pattern: PostgreSQL caches 32 compiled
    expressions per connection, and a query with more patterns than that compiled
    every one of them again for every row (300 patterns: 10 s per page)."""
    bodies = [_regex_body(pattern) for pattern in patterns]
    return "^(" + "|".join(bodies) + ")$" if bodies else None


def _regex_body(pattern: str) -> str:
    parts = []
    for word in validate(pattern).split("."):
        if word == "#":
            parts.append(r"(\.[^.]+)*")
        elif word == "*":
            parts.append(r"\.[^.]+")
        else:
            parts.append(r"\." + re.escape(word))
    return "".join(parts)


# The ops of row changes: a row change's topic is "<app_label>.<model_name>.<op>".
OPS = ("insert", "update", "delete", "truncate")


def row_topics(labels: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The row-change topics of these model labels that any of ``patterns`` matches.

    Known in advance, so a read compares row changes' topics with a list (an index-able
    equality) instead of running a regular expression on every row: the cost of that grew
    with the number of patterns (50 patterns: 12x one pattern's).
    """
    regex = any_regex(patterns)
    if regex is None:
        return []
    compiled = re.compile(regex)
    candidates = (f"{label}.{op}" for label in labels for op in OPS)
    return [topic for topic in candidates if compiled.match("." + topic)]


def parse(value: str | Iterable[str] | None) -> list[str]:
    """Patterns from a comma-separated string or a list; [] means all topics.

    At most ``PUBSUBPULL["MAX_TOPICS"]`` patterns (:class:`InvalidPattern` beyond).
    """
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    maximum = conf.settings.MAX_TOPICS
    if len(items) > maximum:
        raise InvalidPattern(
            f"{len(items)} topic patterns: at most {maximum} (PUBSUBPULL['MAX_TOPICS']); "
            "use wildcards, e.g. 'shop.#' or '*.*.insert'"
        )
    return [validate(item.strip()) for item in items]


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` (the same rule the SQL applies)."""
    return re.match(to_regex(pattern), "." + topic) is not None
