"""Concurrent writers: commits/s of 8 writer threads, untracked against tracked, and what
the capture's NOTIFY costs them.

``WRITERS`` threads, each with a psycopg connection of its own, write for a fixed time (after
an uncounted warm-up) in two workloads:

- **autocommit saves**: one statement per transaction, alternately the INSERT of a new row
  and the UPDATE of one existing row (what ``Model.save()`` does in autocommit);
- **10-row transactions**: 5 INSERTs and 5 UPDATEs, one row a statement, committed together
  (a view in ``transaction.atomic``).

Updated rows are drawn at random from a pool of ``POOL`` rows shared by all writers and, in a
transaction, updated in ascending key order: writers may wait for each other's row locks, but
without pubsubpull no deadlock is possible. Any deadlock counted is pubsubpull's doing.

Configurations, on tables with the same columns, each emptied and refilled with the pool
before it runs, in a rotating order within each repetition:

- **untracked**: ``benchapp_row``, the baseline of every ratio;
- **tracked**: ``benchapp_trackedrow`` (``@pubsubpull.track``), no subscription, no worker;
- **subscribed**: the same with 2 active subscriptions to the loopback receiver of
  ``benchmarks.delivery`` and a worker (``--concurrency 2``) delivering meanwhile;
- **the NOTIFY variant**: ``benchapp_variantrow``, a copy of the tracked table made here, whose
  capture function is pubsubpull's template with the NOTIFY toggled: ``PERFORM pg_notify(...)``
  added when the capture sends none (as now), removed when it sends one. PostgreSQL
  serialises the commits of transactions that sent a NOTIFY (a database-wide lock taken at
  commit, to queue notifications in commit order); tracked against the variant is what that
  costs.

A sampler reads ``pg_stat_activity`` every ``SAMPLE_INTERVAL`` s meanwhile and counts the
writers waiting on heavyweight locks, by lock type (``object``: the NOTIFY commit lock;
``transactionid``/``tuple``: row locks).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from benchmarks import harness

WRITERS = 8
POOL = 4_000  # rows shared by the writers' updates
TRANSACTION_ROWS = 10  # statements of a transaction in the 10-row workload, half updates
SUBSCRIPTIONS = 2  # in the subscribed configuration
WORKER_CONCURRENCY = 2
SAMPLE_INTERVAL = 0.05  # seconds between two looks at pg_stat_activity
NOISE = 0.03  # a ratio within 1 ± NOISE, or a spread that crosses 1, is not a measured cost
APPLICATION = "pubsubpull-bench-writer"

UNTRACKED, TRACKED, SUBSCRIBED, VARIANT = "untracked", "tracked", "subscribed", "variant"
CONFIGURATIONS = (UNTRACKED, TRACKED, SUBSCRIBED, VARIANT)
SAVES, TRANSACTIONS = "autocommit saves", "10-row transactions"
WORKLOADS = (SAVES, TRANSACTIONS)

TABLES = {
    UNTRACKED: "benchapp_row",
    TRACKED: "benchapp_trackedrow",
    SUBSCRIBED: "benchapp_trackedrow",
    VARIANT: "benchapp_variantrow",
}
VARIANT_TABLE = TABLES[VARIANT]
VARIANT_FUNCTION = "benchapp_variantrow_capture"  # outside pubsubpull's prefix: not its own
LABEL = "benchapp.trackedrow"  # the variant's changes carry the tracked table's label
CHANNEL = "pubsubpull"  # what the capture notified, when it did
# Added before the capture function's RETURN when the template sends no NOTIFY: what the
# capture did until it stopped (one notification per transaction, at commit).
_NOTIFY = """    IF _count > 0 THEN
        PERFORM pg_notify('pubsubpull', '');  -- benchmark variant: NOTIFY at commit
    END IF;
"""

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_COLUMNS = "name, email, amount, active, created, payload"

# The pool: the rows of benchapp.models.sample(i) for i in [1, %s], ids 1..POOL.
_FILL = """
INSERT INTO {table} (name, email, amount, active, created, payload)
SELECT 'customer ' || i, 'customer' || i || '@example.com', (i %% 100000) / 100.0, i %% 3 <> 0,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
       jsonb_build_object('n', i, 'tier', (ARRAY['gold', 'silver', 'bronze'])[i %% 3 + 1],
                          'tags', jsonb_build_array('a', 'b'))
FROM generate_series(1, %s) AS i
"""


# The tables ------------------------------------------------------------------------------


def capture_notifies() -> bool:
    """Whether pubsubpull's capture function sends a NOTIFY (its template says so)."""
    from pubsubpull.sql import load

    return "pg_notify(" in load("capture_function")


def names() -> dict[str, str]:
    """Configuration -> how the report names it."""
    variant = "tracked, NOTIFY removed" if capture_notifies() else "tracked + NOTIFY"
    return {UNTRACKED: UNTRACKED, TRACKED: TRACKED, SUBSCRIBED: SUBSCRIBED, VARIANT: variant}


def _toggle_notify(function: str) -> str:
    """The capture function's SQL with its NOTIFY removed, or added when it has none."""
    lines = function.splitlines(keepends=True)
    if capture_notifies():
        kept = [line for line in lines if "pg_notify(" not in line]
        if len(lines) - len(kept) == 1:
            return "".join(kept)
    elif "GET DIAGNOSTICS _count" in function:
        returns = [i for i, line in enumerate(lines) if line.strip() == "RETURN NULL;"]
        if len(returns) == 1:
            return "".join(lines[: returns[0]] + [_NOTIFY] + lines[returns[0] :])
    raise RuntimeError(
        "capture_function.sql changed shape (one pg_notify line, or else a _count and one "
        "RETURN NULL, expected): update benchmarks/writers.py (_toggle_notify)"
    )


def variant_capture_sql() -> tuple[str, str]:
    """The tracked table's capture function, rendered from pubsubpull's template for the
    variant table with the NOTIFY toggled, and the statements attaching it."""
    from psycopg import sql as pgsql

    from pubsubpull import registry
    from pubsubpull.sql import render

    tracked = registry.get(LABEL)
    if tracked is None:
        raise RuntimeError(f"{LABEL} is not tracked")

    def identifier(name: str) -> str:
        return pgsql.Identifier(name).as_string()

    def literal(value: str) -> str:
        return pgsql.Literal(value).as_string()

    function = render(
        "capture_function",
        function=identifier(VARIANT_FUNCTION),
        label=literal(LABEL),
        table=literal(VARIANT_TABLE),
        pk=identifier(tracked.pk_column),
        doc=tracked.document_sql("r"),
        changed=tracked.changed_sql("c.old", "c.new"),
    )
    triggers = render(
        "capture_triggers",
        function=identifier(VARIANT_FUNCTION),
        relation=identifier(VARIANT_TABLE),
        signature=literal("benchmark: pubsubpull capture with the NOTIFY toggled"),
    )
    return _toggle_notify(function), triggers


@contextlib.contextmanager
def variant_table() -> Iterator[None]:
    """The variant copy of the tracked table (same columns, indexes, identity), meanwhile."""
    harness.execute(f"DROP TABLE IF EXISTS {VARIANT_TABLE}")
    harness.execute(f"CREATE TABLE {VARIANT_TABLE} (LIKE benchapp_trackedrow INCLUDING ALL)")
    for statements in variant_capture_sql():
        harness.execute(statements)
    try:
        yield
    finally:
        harness.execute(f"DROP TABLE IF EXISTS {VARIANT_TABLE}")
        harness.execute(f"DROP FUNCTION IF EXISTS {VARIANT_FUNCTION}() CASCADE")


def connection_params() -> dict[str, Any]:
    """psycopg.connect() arguments for a connection of its own to the benchmark database."""
    from pubsubpull.wakeups import connection_params

    return connection_params()


@contextlib.contextmanager
def own_connection(application: str = "pubsubpull-bench") -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection of its own."""
    params = {**connection_params(), "application_name": application}
    with psycopg.connect(**params, autocommit=True) as conn:
        yield conn


def reset(table: str) -> None:
    """Empty ``table`` and the change log, refill the pool (ids 1..POOL), untimed."""
    harness.reset_tables(table, changes=True)
    harness.execute(_FILL.format(table=table), [POOL])
    harness.reset_tables(changes=True)  # the pool's own insert changes
    harness.execute(f"VACUUM ANALYZE {table}, pubsubpull_change")
    harness.checkpoint()


def check(table: str, changes: bool, notifies: bool) -> None:
    """One insert into ``table`` records a change and sends a NOTIFY as configured
    (guards the setup: a variant that did as the tracked table would measure nothing)."""
    reset(table)
    with own_connection() as listener, own_connection() as writer:
        listener.execute(f"LISTEN {CHANNEL}")
        writer.execute(
            f"INSERT INTO {table} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)", _values(0)
        )
        heard = list(listener.notifies(timeout=0.5 if not notifies else 5.0, stop_after=1))
    recorded = harness.execute("SELECT count(*) FROM pubsubpull_change")[0][0]
    if bool(recorded) != changes or bool(heard) != notifies:
        raise RuntimeError(
            f"{table}: {recorded} change(s), {len(heard)} NOTIFY; expected changes {changes}, "
            f"NOTIFY {notifies}"
        )


# The writers -----------------------------------------------------------------------------


def _values(i: int) -> tuple[Any, ...]:
    """The column values of ``benchapp.models.sample(i)``, as parameters."""
    return (
        f"customer {i}",
        f"customer{i}@example.com",
        Decimal(i % 100_000) / 100,
        i % 3 != 0,
        EPOCH + timedelta(seconds=i),
        Jsonb({"n": i, "tier": ("gold", "silver", "bronze")[i % 3], "tags": ["a", "b"]}),
    )


@dataclass
class Tally:
    """What one writer saw while counting."""

    commits: int = 0
    deadlocks: int = 0
    aborted: Counter[str] = field(default_factory=Counter)  # SQLSTATE -> count
    durations: list[float] = field(default_factory=list)  # seconds per committed transaction


class Writer(threading.Thread):
    """One writer thread with its own connection, writing ``workload`` into ``table``."""

    def __init__(self, number: int, table: str, workload: str, run: Run) -> None:
        super().__init__(name=f"writer-{number}", daemon=True)
        self.table = table
        self.workload = workload
        self.run_state = run
        self.random = random.Random(number)
        self.next_row = 1_000_000 * (number + 1)  # sample numbers of this writer's inserts
        self.tally = Tally()
        self.error: BaseException | None = None
        self.insert = (
            f"INSERT INTO {table} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"
        )
        self.update = f"UPDATE {table} SET amount = amount + 1 WHERE id = %s"

    def _insert(self, conn: psycopg.Connection[Any]) -> None:
        self.next_row += 1
        conn.execute(self.insert, _values(self.next_row)).fetchone()

    def _update(self, conn: psycopg.Connection[Any], key: int) -> None:
        conn.execute(self.update, (key,))

    def _save(self, conn: psycopg.Connection[Any], n: int) -> None:
        if n % 2:
            self._update(conn, self.random.randint(1, POOL))
        else:
            self._insert(conn)

    def _transaction(self, conn: psycopg.Connection[Any], n: int) -> None:
        keys = sorted(self.random.sample(range(1, POOL + 1), TRANSACTION_ROWS // 2))
        with conn.transaction():
            for _ in range(TRANSACTION_ROWS - len(keys)):
                self._insert(conn)
            for key in keys:  # ascending: no deadlock among writers
                self._update(conn, key)

    def run(self) -> None:
        state = self.run_state
        try:
            params = {**connection_params(), "application_name": APPLICATION}
            with psycopg.connect(**params, autocommit=True) as conn:
                work: Callable[[psycopg.Connection[Any], int], None] = (
                    self._save if self.workload == SAVES else self._transaction
                )
                state.ready.wait(timeout=60)
                n = 0
                while not state.stop.is_set():
                    n += 1
                    started = time.perf_counter()
                    counting = state.counting.is_set()
                    try:
                        work(conn, n)
                    except psycopg.errors.DeadlockDetected:
                        if counting:
                            self.tally.deadlocks += 1
                    except psycopg.Error as error:
                        if conn.closed:
                            raise
                        if counting:
                            self.tally.aborted[error.sqlstate or type(error).__name__] += 1
                    else:
                        if counting and not state.stop.is_set():
                            self.tally.commits += 1
                            self.tally.durations.append(time.perf_counter() - started)
        except BaseException as error:  # noqa: BLE001 - re-raised by the main thread
            self.error = error
            state.ready.abort()  # the main thread stops waiting for this writer


class Sampler(threading.Thread):
    """Counts the writers waiting on heavyweight locks, by lock type, while counting."""

    def __init__(self, run: Run) -> None:
        super().__init__(name="lock-sampler", daemon=True)
        self.run_state = run
        self.samples = 0
        self.waits: Counter[str] = Counter()  # lock type -> writer-samples
        self.error: BaseException | None = None

    def run(self) -> None:
        state = self.run_state
        try:
            with own_connection() as conn:
                state.counting.wait()
                while not state.stop.is_set():
                    rows = conn.execute(
                        "SELECT wait_event FROM pg_stat_activity "
                        "WHERE application_name = %s AND wait_event_type = 'Lock'",
                        [APPLICATION],
                    ).fetchall()
                    self.samples += 1
                    self.waits.update(str(row[0]) for row in rows)
                    state.stop.wait(SAMPLE_INTERVAL)
        except BaseException as error:  # noqa: BLE001 - re-raised by the main thread
            self.error = error


@dataclass
class Run:
    """The signals the writers follow: all connected (the main thread included), counting
    from now on, stop."""

    ready: threading.Barrier = field(default_factory=lambda: threading.Barrier(WRITERS + 1))
    counting: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class Result:
    """One measurement: one configuration, one workload, one repetition."""

    commits_per_second: float
    deadlocks: int
    aborted: Counter[str]
    durations: list[float]  # sorted, seconds
    lock_waits: dict[str, float]  # lock type -> mean writers waiting on it
    changes: int = 0  # written meanwhile (whole run, warm-up included)
    caught_up: float | None = None  # subscribed: seconds after the writes until all arrived


def write(table: str, workload: str, warmup: float, duration: float) -> Result:
    """``WRITERS`` threads writing ``workload`` into ``table`` for ``warmup`` + ``duration`` s;
    what they committed in the last ``duration`` s."""
    state = Run()
    writers = [Writer(i, table, workload, state) for i in range(WRITERS)]
    sampler = Sampler(state)
    threads: list[Writer | Sampler] = [*writers, sampler]
    for thread in threads:
        thread.start()
    try:
        state.ready.wait(timeout=60)  # every writer has connected
    except threading.BrokenBarrierError:
        state.stop.set()
        state.counting.set()
    time.sleep(warmup)
    state.counting.set()
    started = time.perf_counter()
    time.sleep(duration)
    state.stop.set()
    elapsed = time.perf_counter() - started
    for thread in threads:
        thread.join(60)
    for thread in threads:
        if thread.error is not None:
            raise RuntimeError(f"{thread.name} failed") from thread.error
    aborted: Counter[str] = Counter()
    for writer in writers:
        aborted.update(writer.tally.aborted)
    samples = max(sampler.samples, 1)
    return Result(
        commits_per_second=sum(w.tally.commits for w in writers) / elapsed,
        deadlocks=sum(w.tally.deadlocks for w in writers),
        aborted=aborted,
        durations=sorted(d for w in writers for d in w.tally.durations),
        lock_waits={kind: count / samples for kind, count in sampler.waits.items()},
    )


# The configurations ----------------------------------------------------------------------


Results = dict[tuple[str, str], list[Result]]  # (configuration, workload) -> per repetition


def _changes() -> int:
    return int(harness.execute("SELECT count(*) FROM pubsubpull_change")[0][0])


def _subscribed(
    receiver: Any, workloads: Mapping[str, Callable[[], Result]], catch_up: float
) -> dict[str, Result]:
    """Each workload with the subscriptions active and a worker delivering; how long after
    the writes every change had arrived at both subscriptions."""
    from benchmarks import delivery
    from pubsubpull import reads

    results = {}
    try:
        cursor = str(reads.now())
        for i in range(SUBSCRIPTIONS):
            delivery.subscribe(receiver.url, cursor=cursor, name=f"writers-{i}", status="active")
        with delivery.Worker(concurrency=WORKER_CONCURRENCY) as worker:
            delivery.first_delivery(receiver, SUBSCRIPTIONS)  # the worker is awake
            for workload, measure in workloads.items():
                before = _changes()
                receiver.reset()
                result = measure()
                stopped = time.perf_counter()
                result.changes = _changes() - before
                expected = result.changes * SUBSCRIPTIONS
                stats = receiver.wait_for(expected, timeout=catch_up)
                if stats["changes"] >= expected:
                    result.caught_up = time.perf_counter() - stopped
                if worker.process.poll() is not None:
                    raise RuntimeError(f"the worker exited:\n{worker.tail()}")
                results[workload] = result
    finally:
        delivery.cleanup()
    return results


def measure(reps: int, warmup: float, duration: float, catch_up: float) -> Results:
    """Every configuration and workload, ``reps`` times, the configurations rotating."""
    from benchmarks import delivery

    results: Results = {}
    delivery.subscriber()  # before any reset: users are tracked
    notifies = capture_notifies()
    with (
        variant_table(),
        harness.no_autovacuum([*sorted(set(TABLES.values())), "pubsubpull_change"]),
    ):
        check(TABLES[UNTRACKED], changes=False, notifies=False)
        check(TABLES[TRACKED], changes=True, notifies=notifies)
        check(VARIANT_TABLE, changes=True, notifies=not notifies)
        with delivery.Receiver() as receiver:
            for rep in range(reps):
                shift = rep % len(CONFIGURATIONS)
                order = CONFIGURATIONS[shift:] + CONFIGURATIONS[:shift]
                for configuration in order:
                    table = TABLES[configuration]
                    reset(table)
                    runs = {
                        workload: functools.partial(write, table, workload, warmup, duration)
                        for workload in WORKLOADS
                    }
                    if configuration == SUBSCRIBED:
                        done = _subscribed(receiver, runs, catch_up)
                    else:
                        done = {}
                        for workload, measure_one in runs.items():
                            before = _changes()
                            done[workload] = measure_one()
                            done[workload].changes = _changes() - before
                    for workload, result in done.items():
                        results.setdefault((configuration, workload), []).append(result)
                    print(
                        f"writers: repetition {rep + 1}/{reps}, {configuration}: "
                        + ", ".join(
                            f"{w} {r.commits_per_second:,.0f} commits/s" for w, r in done.items()
                        ),
                        flush=True,
                    )
        harness.reset_tables(*sorted(set(TABLES.values())), changes=True)
    return results


# The report ------------------------------------------------------------------------------


def _rate(values: list[float]) -> str:
    text = f"{harness.median(values):,.0f}"
    return text if len(values) < 2 else f"{text} ({min(values):,.0f}–{max(values):,.0f})"


def _ms(sorted_seconds: list[float], p: float) -> str:
    if not sorted_seconds:
        return "–"
    from benchmarks.delivery import percentile

    return harness.number(percentile(sorted_seconds, p) * 1000)


def _waits(results: list[Result]) -> str:
    kinds: Counter[str] = Counter()
    for result in results:
        kinds.update(result.lock_waits)
    total = sum(kinds.values()) / len(results)
    if not total:
        return "0"
    mix = ", ".join(
        f"{kind} {harness.number(value / len(results), 2)}" for kind, value in kinds.most_common(3)
    )
    return f"{harness.number(total, 2)} ({mix})"


def _aborted(results: list[Result]) -> str:
    counts: Counter[str] = Counter()
    for result in results:
        counts.update(result.aborted)
    if not counts:
        return "0"
    return ", ".join(f"{count} × {state}" for state, count in counts.most_common())


def notify_cost(ratios: list[float]) -> tuple[bool | None, str]:
    """Whether commits/s without NOTIFY / with it shows a cost: every repetition above 1
    and the median beyond the noise margin. None with no spread to judge (one repetition)."""
    text = harness.ratio_cell(ratios)
    if len(ratios) < 2:
        return None, text
    return min(ratios) > 1 and harness.median(ratios) > 1 + NOISE, text


def report(results: Results, reps: int, warmup: float, duration: float, catch_up: float) -> str:
    """The section: the table, the NOTIFY verdict, the subscribed run's delivery."""

    def rates(configuration: str, workload: str) -> list[float]:
        return [r.commits_per_second for r in results[configuration, workload]]

    named = names()
    notifies = capture_notifies()
    quiet, loud = (VARIANT, TRACKED) if notifies else (TRACKED, VARIANT)
    rows = []
    for workload in WORKLOADS:
        base = rates(UNTRACKED, workload)
        for configuration in CONFIGURATIONS:
            runs = results[configuration, workload]
            durations = sorted(d for r in runs for d in r.durations)
            rows.append(
                [
                    f"{workload}: {named[configuration]}",
                    _rate(rates(configuration, workload)),
                    "1×"
                    if configuration == UNTRACKED
                    else harness.ratio_cell(harness.ratios(rates(configuration, workload), base)),
                    _ms(durations, 50),
                    _ms(durations, 99),
                    harness.number(durations[-1] * 1000) if durations else "–",
                    sum(r.deadlocks for r in runs),
                    _aborted(runs),
                    _waits(runs),
                ]
            )
    lines = [
        "## Concurrent writers",
        "",
        f"{WRITERS} writer threads, each with its own psycopg connection, write for "
        f"{duration:g} s (after {warmup:g} s not counted) per measurement; {reps} "
        f"repetition{'s' if reps > 1 else ''}, the configurations in a rotating order. "
        "**Autocommit saves**: one statement per transaction, alternately the INSERT of a new "
        "row and the UPDATE of one existing row (`amount = amount + 1`). **10-row "
        f"transactions**: {TRANSACTION_ROWS - TRANSACTION_ROWS // 2} INSERTs and "
        f"{TRANSACTION_ROWS // 2} UPDATEs, one row a statement, one commit. Updated rows are "
        f"drawn from a pool of {POOL:,} rows shared by all writers and updated in ascending "
        "key order, so writers may wait for each other's row locks but cannot deadlock "
        "without pubsubpull. **untracked**: `benchapp.Row`; **tracked**: "
        "`benchapp.TrackedRow`, no subscription; **subscribed**: the same with "
        f"{SUBSCRIPTIONS} active subscriptions to the loopback receiver of the delivery "
        f"benchmark and a worker (`--concurrency {WORKER_CONCURRENCY}`) delivering meanwhile; "
        f"**{named[VARIANT]}**: a copy of the tracked table whose capture function is "
        "pubsubpull's template with "
        + (
            "its `PERFORM pg_notify(...)` line removed"
            if notifies
            else "`PERFORM pg_notify('pubsubpull', '')` added (once per statement that "
            "captured rows; PostgreSQL sends one notification per transaction, at commit), "
            "as the capture did until it stopped notifying"
        )
        + ". Each configuration starts "
        "from an emptied table refilled with the pool and an empty change log. Latency is per "
        "committed transaction; **lock waits**: writers seen waiting on a heavyweight lock in "
        f"`pg_stat_activity` (sampled every {SAMPLE_INTERVAL * 1000:g} ms), on average, by "
        "lock type (`object`: the database-wide lock PostgreSQL takes at commit of a "
        "transaction that sent a NOTIFY; `transactionid`, `tuple`: row locks).",
        "",
        harness.table(
            [
                "workload: configuration",
                "commits/s",
                "of untracked",
                "p50 ms",
                "p99 ms",
                "max ms",
                "deadlocks",
                "other aborts",
                "lock waits",
            ],
            rows,
        ),
    ]
    lines += [
        "",
        f"What NOTIFY costs: commits/s of **{named[quiet]}** / **{named[loud]}**, per "
        "repetition (the capture " + ("sends a NOTIFY" if notifies else "sends no NOTIFY") + "):",
        "",
    ]
    for workload in WORKLOADS:
        costs, text = notify_cost(harness.ratios(rates(quiet, workload), rates(loud, workload)))
        if costs is None:
            verdict = "one repetition: no spread to judge from"
        elif costs:
            verdict = "**NOTIFY costs measurably** (every repetition faster without it)"
        else:
            verdict = (
                f"not measurable at this noise (the range crosses 1 or the median is within "
                f"±{NOISE:.0%})"
            )
        lines.append(f"- {workload}: {text}: {verdict}")
    failed = {
        named[c]: sum(
            r.deadlocks + sum(r.aborted.values()) for w in WORKLOADS for r in results[c, w]
        )
        for c in CONFIGURATIONS
    }
    lines += [
        "",
        "Goals:",
        "",
        "- no deadlock or other aborted transaction in any configuration (none is possible "
        "without pubsubpull): "
        + ", ".join(f"{c} {n}" for c, n in failed.items())
        + f", {harness.verdict(not any(failed.values()))}",
    ]
    delivered = []
    for workload in WORKLOADS:
        runs = results[SUBSCRIBED, workload]
        waits = [r.caught_up for r in runs]
        behind = sum(w is None for w in waits)
        text = ", ".join("behind" if w is None else f"{w:.1f} s" for w in waits)
        delivered.append(
            f"{workload}: {harness.median([r.changes for r in runs]):,.0f} changes "
            f"per measurement; all delivered to both subscriptions {text} after the writes "
            "stopped" + (f" ({behind} still behind after {catch_up:g} s)" if behind else "")
        )
    lines += [
        "",
        "Delivery during the subscribed runs: " + "; ".join(delivered) + ".",
        "",
        "Notes. The writers, PostgreSQL (and in the subscribed runs the worker and the "
        f"receiver) share this machine's {os.cpu_count()} cores; the subscribed ratio includes "
        "the CPU the worker (its wake-up watcher, its jobs) and the receiver take from the "
        "writers, which is what a single machine running all of them would see. Deadlocks "
        "and other aborts are counted over all repetitions.",
    ]
    return "\n".join(lines)


def run(quick: bool, dry_run: bool) -> str:
    """Measure concurrent writers; the markdown section."""
    reps = harness.choose(quick, dry_run, full=5, fast=3, dry=1)
    duration = harness.choose(quick, dry_run, full=10.0, fast=3.0, dry=1.0)
    warmup = harness.choose(quick, dry_run, full=1.0, fast=0.5, dry=0.2)
    catch_up = harness.choose(quick, dry_run, full=60.0, fast=20.0, dry=10.0)
    results = measure(reps, warmup, duration, catch_up)
    return report(results, reps, warmup, duration, catch_up)
