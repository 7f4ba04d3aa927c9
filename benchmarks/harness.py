"""Helpers shared by the benchmark modules: timing, statistics, markdown and table resets.

A benchmark module ``benchmarks/<name>.py`` defines ``run(quick: bool, dry_run: bool) -> str``
and returns a markdown section starting with ``## <Title>``. ``python -m benchmarks`` has
already set up Django (``benchmarks.settings``) on a fresh, migrated database, so a module
imports models at call time and writes freely. A typical measurement::

    from benchmarks import harness
    from benchmarks.benchapp.models import Row, sample

    reps = harness.repetitions(quick, dry_run)           # 5 full, 3 quick, 1 dry run
    n = harness.choose(quick, dry_run, full=100_000, fast=20_000, dry=500)
    times = harness.timed(
        lambda: Row.objects.bulk_create(Row(**sample(i)) for i in range(n)),
        repeat=reps,
        setup=lambda: harness.reset_tables(Row),      # untimed, before every repetition
    )
    harness.table(
        ["operation", "median s", "spread s"],
        [["bulk_create", harness.seconds(harness.median(times)), harness.spread(times)]],
    )

Rules that keep results comparable: keep each repetition independent (``reset_tables``
between them), interleave the variants being compared within one repetition (so drift hits
all of them alike), time inside this process with ``time.perf_counter`` (``timed`` does),
and report tracked results as ratios against a baseline measured in the same run
(``ratio``, ``ratio_cell``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from django.db import connection, models

T = TypeVar("T")


# Sizes -------------------------------------------------------------------------------------


def choose(quick: bool, dry_run: bool, *, full: T, fast: T, dry: T) -> T:
    """The value for this run's mode: ``dry`` for a dry run, ``fast`` for --quick, else ``full``."""
    if dry_run:
        return dry
    return fast if quick else full


def repetitions(quick: bool, dry_run: bool) -> int:
    """Repetitions per measurement: 5 in a full run, 3 with --quick, 1 in a dry run."""
    return choose(quick, dry_run, full=5, fast=3, dry=1)


# Timing and statistics ---------------------------------------------------------------------


def timed(
    fn: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None
) -> list[float]:
    """Seconds taken by ``fn()`` in each of ``repeat`` runs; ``setup()``, untimed, before each."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(fn: Callable[[], Any]) -> float:
    """Seconds taken by one call of ``fn()``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Iterable[float]) -> float:
    """The median (``statistics.median``); the figure every table reports."""
    return statistics.median(list(values))


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-repetition ratios ``numerators[i] / denominators[i]`` (pairs measured together)."""
    return [n / d if d else float("nan") for n, d in zip(numerators, denominators, strict=True)]


def number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits (no exponent for everyday sizes)."""
    if value != value:  # NaN
        return "–"
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    if "e" in text:
        decimals = max(digits - 1 - int(f"{abs(value):e}".split("e")[1]), 0)
        text = f"{value:.{decimals}f}"
    return text


def seconds(value: float) -> str:
    """Seconds with 3 significant digits, e.g. ``0.0123``."""
    return number(value)


def spread(values: Sequence[float], digits: int = 3) -> str:
    """The range ``min–max`` of the repetitions (``–`` when there is only one)."""
    if len(values) < 2:
        return "–"
    return f"{number(min(values), digits)}–{number(max(values), digits)}"


def ratio(numerator: float, denominator: float) -> str:
    """``numerator / denominator`` as ``1.23×``."""
    if not denominator:
        return "–"
    return number(numerator / denominator) + "×"


def ratio_cell(values: Sequence[float]) -> str:
    """Median of per-repetition ratios with their range: ``1.23× (1.20–1.27)``."""
    text = number(median(values)) + "×"
    return text if len(values) < 2 else f"{text} ({spread(values)})"


def seconds_cell(values: Sequence[float]) -> str:
    """Median seconds with their range: ``0.512 (0.498–0.530)``."""
    text = seconds(median(values))
    return text if len(values) < 2 else f"{text} ({spread(values)})"


def verdict(ok: bool) -> str:
    """``met`` or ``**missed**`` for a goal line."""
    return "met" if ok else "**missed**"


# Markdown ----------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; the first column left-aligned, the others right-aligned."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# Database ----------------------------------------------------------------------------------


def execute(sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on Django's connection; its rows, or ``[]`` when it returns none."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def history_tables() -> list[str]:
    """Tables of django-pghistory's event models and its context (empty if not installed)."""
    from django.apps import apps

    if not apps.is_installed("pghistory"):
        return []
    from pghistory.models import Context, Event

    return [Context._meta.db_table] + [
        m._meta.db_table
        for m in apps.get_models()
        if issubclass(m, Event) and not m._meta.proxy and m._meta.managed
    ]


def reset_tables(
    *tables: type[models.Model] | str, changes: bool = False, history: bool = False
) -> None:
    """Empty tables (models or table names) with ``TRUNCATE ... RESTART IDENTITY``.

    ``changes=True`` also empties pubsubpull's change log and requests, ``history=True``
    django-pghistory's event and context tables. Truncating a tracked table records a
    ``truncate`` change, so the change log is emptied after the tables.
    """
    names = [t if isinstance(t, str) else t._meta.db_table for t in tables]
    if history:
        names += history_tables()
    if names:
        execute(f"TRUNCATE {', '.join(_quote(n) for n in names)} RESTART IDENTITY")
    if changes:
        execute("TRUNCATE pubsubpull_change, pubsubpull_request RESTART IDENTITY")


def checkpoint() -> None:
    """Flush dirty pages (``CHECKPOINT``) so the next timing does not pay for earlier writes."""
    execute("CHECKPOINT")


def server_version() -> str:
    """PostgreSQL's ``server_version``."""
    return str(execute("SHOW server_version")[0][0])


# The machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        total = psutil.virtual_memory().total
    except ImportError:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{total / 2**30:.1f} GiB"


def machine() -> dict[str, str]:
    """What the results depend on: CPU, cores, memory, OS and the software versions."""
    from importlib.metadata import PackageNotFoundError, version

    import django
    import psycopg

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return {
        "CPU": f"{_cpu_model()}, {os.cpu_count()} logical cores",
        "Memory": _memory(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Django": django.get_version(),
        "PostgreSQL": server_version(),
        "psycopg": psycopg.__version__,
        "django-pghistory": installed("django-pghistory"),
        "djangorestframework": installed("djangorestframework"),
    }


@contextlib.contextmanager
def no_autovacuum(tables: list[str]) -> Iterator[None]:
    """Keep autovacuum off ``tables`` meanwhile: it would land in random timings."""
    for name in tables:
        execute(f"ALTER TABLE {name} SET (autovacuum_enabled = false)")
    try:
        yield
    finally:
        for name in tables:
            execute(f"ALTER TABLE {name} RESET (autovacuum_enabled)")
