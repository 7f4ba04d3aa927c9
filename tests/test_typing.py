"""Type checkers see the public API: its real signatures, and no ``Any`` for a typo."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

import pubsubpull

ROOT = Path(__file__).resolve().parent.parent

USES = '''
from typing import Any

from django.db import models

import pubsubpull


@pubsubpull.track(exclude=["password"])
class Customer(models.Model):
    class Meta:
        app_label = "shop"


@pubsubpull.on("shop.customer.*", filter='$.new.active == true')
def changed(changes: list[dict[str, Any]]) -> None:
    """A receiver keeps its own type."""


@pubsubpull.context(job="nightly-import")
def nightly() -> None:
    with pubsubpull.context(batch=7):
        pubsubpull.publish("billing.invoice.paid", {"total": 3})


changed([])
'''

MISTAKES = """
import pubsubpull

pubsubpull.trak
pubsubpull.publish(1, {})
"""


def mypy(tmp_path: Path, **sources: str) -> list[str]:
    """mypy --strict's error lines for the given modules (no Django plugin needed)."""
    for name, text in sources.items():
        (tmp_path / f"{name}.py").write_text(text)
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--config-file=",
            "--follow-imports=silent",  # pubsubpull itself is checked by `mypy pubsubpull`
            f"--cache-dir={tmp_path / 'cache'}",
            *(str(tmp_path / f"{name}.py") for name in sources),
        ]
    )
    assert status in (0, 1), stderr
    return [line for line in stdout.splitlines() if ": error:" in line]


@pytest.mark.slow  # runs mypy
def test_public_names_are_typed_and_misspellings_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYPYPATH", str(ROOT))
    errors = mypy(tmp_path, uses=USES, mistakes=MISTAKES)
    assert [e for e in errors if "uses.py" in e] == []
    (typo, wrong_type) = errors
    assert "mistakes.py:4:" in typo and '"trak"' in typo and 'maybe "track"' in typo
    assert "mistakes.py:5:" in wrong_type and '"publish"' in wrong_type


def test_public_names_load_on_first_use() -> None:
    assert pubsubpull.__all__ == sorted(pubsubpull._PUBLIC)
    for name in pubsubpull.__all__:
        assert getattr(pubsubpull, name).__name__ == name
    with pytest.raises(AttributeError, match="'trak'"):
        pubsubpull.trak  # type: ignore[attr-defined]  # noqa: B018
