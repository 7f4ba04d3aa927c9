"""Capture cost: what tracking adds to writes, against the floor and against django-pghistory.

Workloads, each on models with the same columns (``benchmarks.benchapp``): ``Row``
(untracked), ``TrackedRow`` (pubsubpull) and ``HistoryRow`` (django-pghistory, row-level
insert/update/delete events):

- ``bulk_create`` of N rows (``batch_size=10_000``: Django's usual way to load many rows, 10
  statements for 100,000 rows), then one ``QuerySet.update()`` of all of them, then their
  ``QuerySet.delete()`` (one ``DELETE`` statement);
- M single-row ORM saves in autocommit, the shape of web requests: ``Model(...).save()`` of new
  rows, then ``save()`` of each loaded row after changing a field.

The floor of an operation is the time to write the same number of change rows, with the same
jsonb payloads (``to_jsonb`` of the untracked table's rows), straight into the change table in
one ``INSERT ... SELECT``: what writing the log costs at all. Overhead is tracked minus
untracked time. All variants run interleaved in every repetition (their order rotating), and
every table gets the same treatment between operations (a scan that sets hint bits, then a
``CHECKPOINT``), so no variant pays for another's leftovers.

A second pass profiles where the overhead goes: the same workloads on ``TransitionRow``
(untracked, with no-op statement triggers that only make PostgreSQL keep the transition
tables) and on the tracked table with ``track_functions`` on, which gives the time spent
inside the capture function.
With ``auto_explain`` on the server (not in pgserver), the plans of the trigger's statements
are shown too.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, models, transaction
from django.db.models import F

from benchmarks import harness

LABEL = "benchapp.trackedrow"
TABLE = "benchapp_trackedrow"
BATCH_SIZE = 10_000
VARIANTS = ("untracked", "ours", "pghistory")
BULK = ("bulk_create", "update", "delete")
SINGLE = ("save (insert)", "save (update)")
OPERATIONS = BULK + SINGLE
BULK_GOAL = 1.3  # overhead / floor, every bulk operation
SINGLE_GOAL = 1.05  # tracked / untracked, single saves
PGHISTORY_SINGLE_GOAL = 1.0  # ours / pghistory, single saves (bulk: strictly below 1)

Times = dict[tuple[str, str], list[float]]
CHUNK = 100  # single saves: the variants take turns every CHUNK saves

# The floor: the change rows the trigger writes, written directly in one statement.
_FLOOR = {
    "insert": (
        'INSERT INTO pubsubpull_change (topic, model, "table", op, pk, new) '
        "SELECT %s, %s, %s, 'insert', r.id::text, to_jsonb(r) FROM benchapp_row r"
    ),
    "update": (
        'INSERT INTO pubsubpull_change (topic, model, "table", op, pk, old, new) '
        "SELECT %s, %s, %s, 'update', r.id::text, to_jsonb(r), to_jsonb(r) FROM benchapp_row r"
    ),
    "delete": (
        'INSERT INTO pubsubpull_change (topic, model, "table", op, pk, old) '
        "SELECT %s, %s, %s, 'delete', r.id::text, to_jsonb(r) FROM benchapp_row r"
    ),
}
_FLOOR_OF = {  # operation -> the change rows it writes
    "bulk_create": "insert",
    "update": "update",
    "delete": "delete",
    "save (insert)": "insert",
    "save (update)": "update",
}


def _models() -> dict[str, type[models.Model]]:
    from benchmarks.benchapp.models import HistoryRow, Row, TrackedRow, TransitionRow

    return {
        "untracked": Row,
        "ours": TrackedRow,
        "pghistory": HistoryRow,
        "transition tables": TransitionRow,
    }


def _reset(model: type[models.Model]) -> None:
    harness.reset_tables(model, changes=True, history=True)


def _settle(model: type[models.Model]) -> None:
    """Set the hint bits of the rows just written, as the next reader would, untimed."""
    harness.execute(f"SELECT count(*) FROM {model._meta.db_table}")


def _function_time(function: str) -> float:
    """Seconds this backend has spent in ``function``, as its statistics know so far."""
    rows = harness.execute(
        "SELECT coalesce(sum(total_time), 0) FROM pg_stat_xact_user_functions WHERE funcname = %s",
        [function],
    )
    return float(rows[0][0]) / 1000


@dataclass
class Pass:
    """Where timings go, and how operations run.

    ``times[variant, op]`` gets one value per repetition. In a profile pass
    (``in_transaction``) every timed call runs in a transaction of its own, its commit timed
    too, and for the variant named in ``inside`` the time spent inside each function of
    ``functions`` (``track_functions``) goes to ``times[key, op]``.
    ``pg_stat_xact_user_functions`` also holds earlier transactions' statistics not yet
    flushed, so it is read before and after (untimed).
    """

    times: Times = field(default_factory=lambda: defaultdict(list))
    in_transaction: bool = False
    inside: str = ""
    functions: dict[str, str] = field(default_factory=dict)  # key -> function name

    def start(self, variant: str, op: str) -> None:
        """Open this repetition's value (timed calls add to it)."""
        self.times[variant, op].append(0.0)
        if variant == self.inside:
            for key in self.functions:
                self.times[key, op].append(0.0)

    def time(self, variant: str, op: str, fn: Callable[[], Any]) -> None:
        """Run ``fn`` and add its time to this repetition's value."""
        if not self.in_transaction:
            self.times[variant, op][-1] += harness.measure(fn)
            return
        profiled = self.functions if variant == self.inside else {}
        with transaction.atomic():
            if profiled:
                harness.execute("SET LOCAL track_functions = 'pl'")
            before = {key: _function_time(name) for key, name in profiled.items()}
            elapsed = harness.measure(fn)
            for key, name in profiled.items():
                self.times[key, op][-1] += _function_time(name) - before[key]
            start = time.perf_counter()  # the commit is timed too
        self.times[variant, op][-1] += elapsed + time.perf_counter() - start

    def once(self, variant: str, op: str, fn: Callable[[], Any]) -> None:
        """One timed operation, after a ``CHECKPOINT``."""
        self.start(variant, op)
        harness.checkpoint()
        self.time(variant, op, fn)


def _floor(times: Times, op: str) -> None:
    """Time writing one change row per ``benchapp_row`` row, as ``op`` would, directly."""
    kind = _FLOOR_OF[op]
    harness.reset_tables(changes=True)
    harness.checkpoint()
    times["floor", op].append(
        harness.measure(lambda: harness.execute(_FLOOR[kind], [f"{LABEL}.{kind}", LABEL, TABLE]))
    )
    harness.reset_tables(changes=True)


def _bulk(p: Pass, variant: str, model: type[models.Model], n: int) -> None:
    """bulk_create, update() and delete() of ``n`` rows (floors on the way for the baseline)."""
    from benchmarks.benchapp.models import sample

    floors = variant == "untracked" and not p.in_transaction
    _reset(model)
    objs = [model(**sample(i)) for i in range(n)]
    p.once(
        variant,
        "bulk_create",
        lambda: model._default_manager.bulk_create(objs, batch_size=BATCH_SIZE),
    )
    _settle(model)
    if floors:  # while the baseline table holds the rows
        _floor(p.times, "bulk_create")
        _floor(p.times, "update")
    p.once(variant, "update", lambda: model._default_manager.update(amount=F("amount") + 1))
    _settle(model)
    if floors:
        _floor(p.times, "delete")
    p.once(variant, "delete", lambda: model._default_manager.all().delete())
    if model._default_manager.exists():
        raise RuntimeError(f"{model.__name__}: delete() left rows behind")


def _single(p: Pass, variants: dict[str, type[models.Model]], m: int) -> None:
    """``m`` saves of new rows, then ``m`` saves of the loaded rows, one statement each.

    The variants take turns every ``CHUNK`` saves, so a burst of load elsewhere on the
    machine falls on all of them alike.
    """
    from benchmarks.benchapp.models import sample

    floors = "untracked" in variants and not p.in_transaction
    values = [sample(i) for i in range(m)]

    def insert(model: type[models.Model], chunk: list[dict[str, Any]]) -> None:
        for v in chunk:
            model(**v).save()

    def update(chunk: list[models.Model]) -> None:
        for obj in chunk:
            obj.amount += 1  # type: ignore[attr-defined]
            obj.save()

    for variant, model in variants.items():
        _reset(model)
        p.start(variant, "save (insert)")
    harness.checkpoint()
    for first in range(0, m, CHUNK):
        chunk = values[first : first + CHUNK]
        for variant, model in variants.items():
            p.time(variant, "save (insert)", lambda: insert(model, chunk))  # noqa: B023

    # Reading every row also sets the hint bits, for all variants alike.
    loaded = {v: list(mo._default_manager.order_by("pk")) for v, mo in variants.items()}
    if floors:
        _floor(p.times, "save (insert)")
        _floor(p.times, "save (update)")
    for variant in variants:
        p.start(variant, "save (update)")
    harness.checkpoint()
    for first in range(0, m, CHUNK):
        for variant in variants:
            objs = loaded[variant][first : first + CHUNK]
            p.time(variant, "save (update)", lambda: update(objs))  # noqa: B023


def _check_capture(n: int) -> None:
    """The tracked table really is captured and the peer really records (guards the setup)."""
    from benchmarks.benchapp.models import HistoryRow, TrackedRow, sample

    _reset(TrackedRow)
    _reset(HistoryRow)
    TrackedRow._default_manager.bulk_create([TrackedRow(**sample(i)) for i in range(n)])
    HistoryRow._default_manager.bulk_create([HistoryRow(**sample(i)) for i in range(n)])
    changes = harness.execute("SELECT count(*) FROM pubsubpull_change WHERE model = %s", [LABEL])
    events = harness.execute("SELECT count(*) FROM benchapp_historyrowevent")
    if changes[0][0] != n or events[0][0] != n:
        raise RuntimeError(f"capture is not installed: {changes[0][0]} changes, {events} events")
    _reset(TrackedRow)
    _reset(HistoryRow)


def _no_autovacuum() -> contextlib.AbstractContextManager[None]:
    """Keep autovacuum off the benchmark tables meanwhile."""
    tables = [m._meta.db_table for m in _models().values()]
    return harness.no_autovacuum(tables + harness.history_tables() + ["pubsubpull_change"])


def _rotate(names: tuple[str, ...], rep: int) -> tuple[str, ...]:
    return names[rep % len(names) :] + names[: rep % len(names)]


def _run(p: Pass, names: tuple[str, ...], n: int, m: int, reps: int) -> Times:
    all_models = _models()
    for rep in range(reps):
        order = _rotate(names, rep)
        for variant in order:
            _bulk(p, variant, all_models[variant], n)
        _single(p, {v: all_models[v] for v in order}, m)
    for model in all_models.values():
        _reset(model)
    return p.times


def measure(n: int, m: int, reps: int) -> Times:
    """Timings keyed by ``(variant or "floor", operation)``, one value per repetition."""
    return _run(Pass(), VARIANTS, n, m, reps)


def profile(n: int, m: int, reps: int) -> Times:
    """Untracked, transition tables only, and ours with the time inside the capture function."""
    from pubsubpull.capture import function_name

    functions = {"function": function_name(TABLE)}
    p = Pass(in_transaction=True, inside="ours", functions=functions)
    return _run(p, ("untracked", "transition tables", "ours"), n, m, reps)


def plans(n: int) -> str | None:
    """The plans of the capture function's statements for ``update()`` of ``n`` rows.

    Needs ``auto_explain`` on the server (``LOAD`` works for superusers); None without it.
    """
    from benchmarks.benchapp.models import TrackedRow, sample

    try:
        harness.execute("LOAD 'auto_explain'")  # stays loaded for the session
    except Exception:  # noqa: BLE001 - not installed on this server
        return None
    notices: list[str] = []
    _reset(TrackedRow)
    TrackedRow._default_manager.bulk_create(
        [TrackedRow(**sample(i)) for i in range(n)], batch_size=BATCH_SIZE
    )
    _settle(TrackedRow)
    raw = connection.connection
    assert raw is not None

    def handler(diagnostic: Any) -> None:
        notices.append(str(diagnostic.message_primary or ""))

    try:
        with transaction.atomic():
            for setting in (
                "auto_explain.log_min_duration = 0",
                "auto_explain.log_analyze = on",
                "auto_explain.log_buffers = on",
                "auto_explain.log_nested_statements = on",
                "auto_explain.log_level = notice",
            ):
                harness.execute(f"SET LOCAL {setting}")
            raw.add_notice_handler(handler)
            try:
                TrackedRow._default_manager.update(amount=F("amount") + 1)
            finally:
                raw.remove_notice_handler(handler)
    finally:
        _reset(TrackedRow)
    nested = [text for text in notices if "pubsubpull_change" in text]
    return "\n\n".join(nested or notices)


# Report ----------------------------------------------------------------------------------


def _names(n: int, m: int) -> dict[str, str]:
    return {
        "bulk_create": f"bulk_create {n:,}",
        "update": f"update() of {n:,}",
        "delete": f"delete() of {n:,}",
        "save (insert)": f"{m:,} × save() (insert)",
        "save (update)": f"{m:,} × save() (update)",
    }


def _diff(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def report(times: Times, profiled: Times, explained: str | None, n: int, m: int, reps: int) -> str:
    """The section: the results, the goals, where the overhead goes."""

    def t(variant: str, op: str) -> list[float]:
        return times[variant, op]

    def overhead_floor(op: str) -> list[float]:
        return harness.ratios(_diff(t("ours", op), t("untracked", op)), t("floor", op))

    names = _names(n, m)
    rows = []
    for op in OPERATIONS:
        rows.append(
            [
                names[op],
                harness.seconds_cell(t("untracked", op)),
                harness.seconds_cell(t("floor", op)),
                harness.seconds_cell(t("ours", op)),
                harness.ratio_cell(harness.ratios(t("ours", op), t("untracked", op))),
                harness.ratio_cell(overhead_floor(op)),
                harness.seconds_cell(t("pghistory", op)),
                harness.ratio_cell(harness.ratios(t("pghistory", op), t("untracked", op))),
                harness.ratio_cell(harness.ratios(t("ours", op), t("pghistory", op))),
            ]
        )
    headers = [
        "operation",
        "untracked s",
        "floor s",
        "ours s",
        "ours / untracked",
        "overhead / floor",
        "pghistory s",
        "pghistory / untracked",
        "ours / pghistory",
    ]

    goals, missed = [], []
    for op in BULK:
        value = harness.median(overhead_floor(op))
        goals.append(
            f"- {names[op]}: overhead / floor {harness.number(value)} ≤ {BULK_GOAL}: "
            f"{harness.verdict(value <= BULK_GOAL)}"
        )
        if value > BULK_GOAL:
            missed.append(op)
    for op in SINGLE:
        value = harness.median(harness.ratios(t("ours", op), t("untracked", op)))
        goals.append(
            f"- {names[op]}: ours / untracked {harness.number(value)} ≤ {SINGLE_GOAL}: "
            f"{harness.verdict(value <= SINGLE_GOAL)}"
        )
        if value > SINGLE_GOAL:
            missed.append(op)
    for op in OPERATIONS:
        value = harness.median(harness.ratios(t("ours", op), t("pghistory", op)))
        if op in SINGLE:
            ok = value <= PGHISTORY_SINGLE_GOAL
            text = f"ours / pghistory {value:.3f} ≤ {PGHISTORY_SINGLE_GOAL:g}"
        else:
            ok = value < 1
            text = f"ours below pghistory ({harness.number(value)}×)"
        goals.append(f"- {names[op]}: {text}: {harness.verdict(ok)}")
        if not ok and op not in missed:
            missed.append(op)

    sections = [
        "## Capture cost",
        (
            f"{n:,} rows through `bulk_create` (batch_size {BATCH_SIZE:,}), one "
            "`QuerySet.update()` of all of them (`amount = amount + 1`) and their "
            f"`QuerySet.delete()`; then {m:,} single-row `save()` calls in autocommit, "
            "first of new rows, then of each loaded row after changing `amount`. "
            f"{reps} repetition{'s' if reps > 1 else ''}, the variants interleaved. "
            "Untracked: `benchapp.Row`; ours: `benchapp.TrackedRow` (`@pubsubpull.track`); "
            "pghistory: `benchapp.HistoryRow` (`@pghistory.track(InsertEvent(), "
            "UpdateEvent(), DeleteEvent())`, its default row-level triggers). **Floor**: the "
            "same number of change rows with the same jsonb payloads (`to_jsonb` of the rows; "
            "old and new for updates) written straight into `pubsubpull_change` in one "
            "`INSERT ... SELECT`: the cost of writing the log at all. **Overhead** = ours − "
            "untracked, per repetition."
        ),
        harness.table(headers, rows),
        "Goals: overhead / floor ≤ 1.3 for every bulk operation; single saves ours / "
        "untracked ≤ 1.05; ours / pghistory ≤ 1 for single saves and below 1 for bulk "
        "operations.\n\n" + "\n".join(goals),
        _breakdown(times, profiled, names, m),
    ]
    if missed:
        sections.append(_findings(times, profiled, names, missed, m))
    if explained:
        sections.append(
            f"Plans of the capture function's statements during `update()` of {n:,} rows "
            "(`auto_explain`, nested statements):\n\n"
            f"<details><summary>auto_explain</summary>\n\n```\n{explained}\n```\n</details>"
        )
    else:
        sections.append(
            "_This server has no `auto_explain` (pgserver ships no contrib modules): run with "
            "`DATABASE_URL` pointing at a server that has it to include the trigger's plans._"
        )
    sections.append(NOTES)
    return "\n\n".join(sections)


def _breakdown(times: Times, profiled: Times, names: dict[str, str], m: int) -> str:
    """Where ours' overhead goes, from the profile pass."""

    def p(variant: str, op: str) -> float:
        return harness.median(profiled[variant, op])

    def over(variant: str, op: str) -> float:
        return harness.median(_diff(profiled[variant, op], profiled["untracked", op]))

    rows = []
    for op in OPERATIONS:
        overhead, capture, function = (
            over("ours", op),
            over("transition tables", op),
            p("function", op),
        )
        floor = harness.median(times["floor", op])
        rows.append(
            [
                names[op],
                harness.seconds(overhead),
                harness.seconds(capture),
                harness.seconds(function),
                harness.seconds(floor),
                harness.seconds(function - floor),
                harness.seconds(overhead - capture - function),
            ]
        )
    per_statement = "; ".join(
        f"{op}: {harness.number(p('function', op) / m * 1e6)} µs in the capture function"
        for op in SINGLE
    )
    return "\n\n".join(
        [
            "### Where the overhead goes",
            "A second pass, same sizes, every operation in a transaction of its own, commit "
            f"included (the single saves commit every {CHUNK} here): untracked; "
            "**transition tables**: "
            "`benchapp.TransitionRow`, untracked but with no-op statement triggers that only "
            "make PostgreSQL keep the transition tables; and ours with `track_functions = "
            "'pl'`, which gives the time spent inside the capture function (**function**, "
            "including its inserts into the change table; nothing else runs in the writer's "
            "transaction: no trigger on the change table, no job queued). **Beyond floor** = "
            "function − floor: the function's work other than writing the change rows "
            "(pairing old and new rows, comparing them, per-statement set-up and planning). "
            "**Elsewhere** = overhead − transition tables − function.",
            harness.table(
                [
                    "operation",
                    "overhead s",
                    "transition tables s",
                    "function s",
                    "floor s",
                    "beyond floor s",
                    "elsewhere s",
                ],
                rows,
            ),
            f"Per single-row statement: {per_statement}.",
        ]
    )


def _findings(
    times: Times, profiled: Times, names: dict[str, str], missed: list[str], m: int
) -> str:
    lines = ["### Missed goals: the numbers behind them", ""]
    for op in missed:
        ours = harness.median(times["ours", op])
        untracked = harness.median(times["untracked", op])
        pghistory = harness.median(times["pghistory", op])
        floor = harness.median(times["floor", op])
        function = harness.median(profiled["function", op])
        text = (
            f"- **{names[op]}**: ours {harness.seconds(ours)} s, untracked "
            f"{harness.seconds(untracked)} s, pghistory {harness.seconds(pghistory)} s, floor "
            f"{harness.seconds(floor)} s; in the profile pass {harness.seconds(function)} s "
            "inside the capture function."
        )
        if op in SINGLE:
            text += (
                f" Per statement: {harness.number((ours - untracked) / m * 1e6)} µs of "
                f"overhead on {harness.number(untracked / m * 1e6)} µs per untracked save "
                "(Django, the round trip, the commit); pghistory adds "
                f"{harness.number((pghistory - untracked) / m * 1e6)} µs."
            )
        lines.append(text)
    lines.append("")
    lines.append("What bounds them is in the profiling notes below.")
    return "\n".join(lines)


NOTES = """### Profiling notes (2026-11-23, pubsubpull 0.2.0.dev0)

Found while writing this benchmark, on this machine, with: an instrumented copy of the capture
function that runs its `INSERT` through `EXECUTE 'EXPLAIN (ANALYZE, BUFFERS, VERBOSE) ...'`;
`auto_explain` on the machine's PostgreSQL 15; `perf record --call-graph dwarf` on the backend
during single saves; and variants of the function body installed on the benchmark database
(backend CPU time from `/proc/<pid>/schedstat`, which the load of other processes on this
2-core machine disturbs far less than wall time).

- **Bulk operations are bounded by the floor.** The trigger's `INSERT ... SELECT` has the
  floor's plan (a scan of the transition table feeding the insert), and keeping the transition
  tables costs up to 0.1× the floor. In SQL-only runs of 100,000 rows, overhead / floor was
  0.8-1.2 for inserts and deletes and 1.1-1.4 for updates; the floor itself is `to_jsonb` of
  every row version and the change table's per-row work (sequence, `pg_current_xact_id()`,
  three indexes).
- **`update()` pairs old and new versions** by primary key with a `FULL JOIN` (a changed key is
  recorded as delete + insert) and drops pairs whose documents are equal. Transition tables
  have no statistics, so the join is estimated at N²/2 rows: a hash full join for small
  statements, a merge join for large ones, whose two sorts spill to disk at 100,000 rows with
  the default `work_mem` (`external merge`, 28 MB each; the sorts take ~0.1 s of a ~1.1 s
  statement, computing `to_jsonb` of both versions ~0.4 s).
  `SET work_mem = '64MB'` on the function made no difference beyond noise. The two
  sub-selects were flattened into the join, so `to_jsonb` of each version ran twice (in the
  join's filter and again in the insert's target list); `OFFSET 0` in them (applied
  2026-12-03) computes each once: inside the function, 4 µs less per single-row update, and a
  100,000-row `update()` on PG15 1.7 → 1.3 s (no change on PG16). A full join cannot become a
  nested loop, so a plan cached from a one-row statement stays safe for 100,000 rows (checked,
  current and proposed function).
- **Single saves: re-planning inside the trigger (the main finding).** The `INSERT`s use the
  PL/pgSQL variables `_request` and `_context`, so they run as parameterised statements and
  the plan cache chooses between a custom plan (planned on every call) and a generic one by
  estimated cost; those estimates depend on the transition table sizes seen when planning. In
  a session that also runs bulk statements (long-lived connections, and this benchmark), the
  single-row statements were planned on every call: `perf` put 15% of the backend's CPU in
  the planner under the trigger. Without parameters PL/pgSQL always uses the one generic plan.
  Applied in `pubsubpull/sql/capture_function.sql`: in the three `INSERT ... SELECT`s,
  replace `_request, _context` by one-time sub-selects (InitPlans, evaluated once per
  statement) `(SELECT (nullif(current_setting('pubsubpull.request', true), '')::jsonb->>'id')
  ::uuid), (SELECT nullif(current_setting('pubsubpull.context', true), '')::jsonb)`. Measured
  (ORM saves in autocommit, backend CPU, after bulk statements in the same session, 3,000 saves
  × 5): overhead per insert statement 90 → 63 µs, per update statement 202 → 117 µs
  (pghistory: 44 and 65 µs); planner samples under the trigger 769 → 3; bulk operations
  unchanged.
- **The wake-up trigger, since removed** (`pubsubpull_wake_dispatcher`, a statement trigger
  on the change table that looked for active subscriptions and queued a dispatch job) cost
  11-22 µs per autocommit statement: its queries started index scans, which open relations
  and ask the kernel for their size on every transaction (5% of the backend's CPU in
  `perf`); disabling it brought ours close to pghistory's cost for single inserts. Its job
  insert also made writers wait on each other (issue 9). Migration 0006 drops it: workers
  now find new changes from a connection of their own (`pubsubpull.wakeups`), and nothing
  but the capture function runs in the writer's transaction.
- **Commit dominates single saves.** 30-42% of the backend's CPU per save is the WAL
  flush at commit (`XLogFlush`, a virtual disk); a tracked save writes a second row and flushes
  a little more. `pg_notify` and the foreign-key check on `request_id` measured 1-3 µs per
  statement each, on one connection; with concurrent writers a NOTIFY costs far more (a
  database-wide lock at commit), so the capture sends none now: see "Concurrent writers".
- **pghistory's row trigger** writes typed columns (no jsonb) and, for updates, only the new
  row; ours writes `to_jsonb` of the row and, for updates, old and new, plus the statement
  machinery (transition tables, the join). That is why a single-row update costs ours more
  per statement even without re-planning, while set-based capture wins every bulk operation
  by a wide margin.
- **What is left against pghistory (2026-12-03).** Time inside the trigger functions per
  autocommit statement on PG15 (`track_functions`, Django's SQL, 2,000 statements × 3), and
  `perf` of the backend: a single-row update costs ours 56-60 µs against pghistory's 35; a
  variant of our function that writes only the new document, with no pairing, costs 38.5,
  pghistory's figure, so the rest is the old document (`to_jsonb`, a larger row: ~15 µs) and
  the hash full join that pairs versions (~5 µs; a 1×1 cross join in its place, for
  measurement only). An insert costs ours 37-38 µs against 31-32: `to_jsonb` (5 µs) and
  index entries (the position and topic indexes; pghistory's event table has integer keys
  only). Removed on 2026-12-03 (migration 0017): the foreign-key constraint on `request_id`
  (a deferred trigger event per row, 2-3 µs at commit) and the request index entry of changes
  made outside a request (2-3 µs); the index on `model` (2-3 µs) stays, the admin's model
  filter reads it. A `C` collation on `topic` and `model` changed nothing measurable. What
  remains is what the change log stores: old and new documents per update, read by topic and
  position."""


def run(quick: bool, dry_run: bool) -> str:
    """Measure capture cost and return the markdown section."""
    n = harness.choose(quick, dry_run, full=100_000, fast=20_000, dry=500)
    m = harness.choose(quick, dry_run, full=5_000, fast=1_000, dry=50)
    reps = harness.repetitions(quick, dry_run)
    _check_capture(min(n, 100))
    with _no_autovacuum():
        times = measure(n, m, reps)
        profiled = profile(n, m, min(reps, 3))
        explained = plans(n)
    return report(times, profiled, explained, n, m, reps)
