"""Concurrency and fault tests: each asserts that every committed change is received or
pulled, in order per subscription, with duplicates only as at-least-once allows."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.slow)
