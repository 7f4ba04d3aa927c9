"""Fan-out: 1 to 10,000 subscriptions, a quarter of them matching each change.

For each size, N active subscriptions of the benchmark user to one loopback receiver,
their topics spread over four sets (``benchapp.trackedrow.insert``, ``...update``,
``...delete``, ``benchapp.row.#``) so that the inserts written match a quarter of them
(the one subscription of the smallest size matches). One worker (``--concurrency 4``)
delivers while this process inserts a ``TrackedRow`` every 10 ms (100 changes/s) for the
run's duration (after a first change every matching subscription has received, to warm
up); then the worker gets a drain budget to catch up.

Measured: per delivered change, the latency from the change's time (its transaction's
start, written by the capture) to its receipt (p50, p99: computed in the receiver, which
keeps a 1 ms histogram rather than every receipt); the share of the expected deliveries
that arrived within the budget; the worker's CPU per delivered change; and the dispatch's
own work per wake-up: :func:`pubsubpull.fanout.concerned` (what a wake-up runs) timed
with one new change visible, against :func:`pubsubpull.delivery.due_subscriptions` (the
sweep's look at every subscription: what each wake-up ran before) as the baseline.
And what the machine allows (:func:`ceiling`): the changes/s that bare ``requests`` loops
put into the same receiver, against what the largest size needs.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
from typing import Any

import requests

from benchmarks import harness
from benchmarks.delivery import (
    QuietHandler,
    Worker,
    cleanup,
    paced,
    serve_forever,
    start_server,
    subscriber,
)

TOPIC_SETS = (
    ["benchapp.trackedrow.insert"],
    ["benchapp.trackedrow.update"],
    ["benchapp.trackedrow.delete"],
    ["benchapp.row.#"],
)
WRITE_INTERVAL = 0.01  # s: 100 changes/s
CONCURRENCY = 4
LATENCY_GOAL = 2.0  # s, p99 at 10,000 subscriptions
SEVERAL_GOAL = 1.3  # two worker processes' changes/s over one's
#: Changes in one body of the ceiling's loops: the most a batch can hold and still arrive
#: within the p99 goal at this rate (its first change waits for the last one).
CEILING_BATCH = int(LATENCY_GOAL / WRITE_INTERVAL)
CEILING_SECONDS = 5.0
BUCKETS = 300_000  # 1 ms each: 300 s


# The receiver: a process of its own, keeping a latency histogram --------------------------


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.histogram = [0] * BUCKETS
        self.changes = 0
        self.last = 0.0
        self.positions: dict[str, tuple[int, int]] = {}  # the last one of each subscription
        self.out_of_order = 0  # changes at or before one received earlier by the same one


class _Handler(QuietHandler):
    state: _State

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received = time.time()
        body = json.loads(data)
        changes, name = body["changes"], body["subscription"]
        state = self.state
        with state.lock:
            for change in changes:
                written = datetime.datetime.fromisoformat(change["time"]).timestamp()
                bucket = min(BUCKETS - 1, max(0, int((received - written) * 1000)))
                state.histogram[bucket] += 1
                txid, _, seq = change["id"].partition("-")
                position = (int(txid), int(seq))
                if position <= state.positions.get(name, (-1, -1)):
                    state.out_of_order += 1
                state.positions[name] = position
            state.changes += len(changes)
            state.last = received
        self._answer(204)

    def do_GET(self) -> None:  # /stats: count and latency percentiles
        state = self.state
        with state.lock:
            body = {
                "changes": state.changes,
                "last": state.last,
                "out_of_order": state.out_of_order,
                **{f"p{p}": _percentile(state.histogram, state.changes, p) for p in (50, 99)},
            }
        self._answer(200, json.dumps(body).encode())

    def do_POST(self) -> None:  # /reset
        with self.state.lock:
            self.state.reset()
        self._answer(204)


def _percentile(histogram: list[int], count: int, p: float) -> float | None:
    """The p-th percentile (seconds) of a 1 ms histogram of ``count`` values."""
    if not count:
        return None
    rank, seen = count * p / 100, 0
    for bucket, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return (bucket + 1) / 1000
    return BUCKETS / 1000


def serve() -> None:
    """Run the receiver until terminated (see :func:`delivery.serve_forever`)."""
    _Handler.state = _State()
    serve_forever(_Handler)


class Receiver:
    """The receiver process, with its count and latency percentiles over HTTP."""

    def __init__(self) -> None:
        self.process, self.base = start_server("benchmarks.fanout")
        self.url = self.base + "/hook/"

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)

    def reset(self) -> None:
        requests.post(self.base + "/reset", timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = requests.get(self.base + "/stats", timeout=30)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]


# One size ----------------------------------------------------------------------------------


def subscribe_many(url: str, count: int) -> int:
    """``count`` active subscriptions from now on; how many match the inserts written."""
    from pubsubpull import reads
    from pubsubpull.models import Subscription

    cleanup()
    owner, cursor = subscriber(), str(reads.now())
    Subscription.objects.bulk_create(
        (
            Subscription(
                owner=owner,
                name=f"fan-{n}",
                target=url,
                topics=TOPIC_SETS[n % len(TOPIC_SETS)],
                cursor=cursor,
            )
            for n in range(count)
        ),
        batch_size=2000,
    )
    return sum(1 for n in range(count) if n % len(TOPIC_SETS) == 0)


def dispatch_work(tries: int) -> tuple[float, float]:
    """Seconds of :func:`fanout.concerned` with one new change visible (median of ``tries``),
    and of the look at every subscription (once: it is the slow one)."""
    from benchmarks.benchapp.models import TrackedRow, sample
    from pubsubpull import delivery, fanout

    times = []
    fanout.forget()
    fanout.concerned()
    for i in range(tries):
        TrackedRow._default_manager.create(**sample(20_000_000 + i))
        started = time.perf_counter()
        fanout.concerned()
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    delivery.due_subscriptions()
    return harness.median(times), time.perf_counter() - started


def write(duration: float) -> int:
    """Insert a row every WRITE_INTERVAL for ``duration`` s; how many."""
    from benchmarks.benchapp.models import TrackedRow, sample

    count = int(duration / WRITE_INTERVAL)
    for i in paced(count, WRITE_INTERVAL):
        TrackedRow._default_manager.create(**sample(30_000_000 + i))
    return count


def one_size(receiver: Receiver, count: int, duration: float, budget: float) -> dict[str, Any]:
    import psutil  # type: ignore[import-untyped]  # bench group; no stubs installed

    from benchmarks.benchapp.models import TrackedRow, sample
    from pubsubpull import reads
    from pubsubpull.models import Subscription

    matching = subscribe_many(receiver.url, count)
    dispatch, full_look = dispatch_work(tries=5)
    Subscription.objects.update(cursor=str(reads.now()))  # not the rows dispatch_work wrote
    receiver.reset()
    with Worker(CONCURRENCY) as worker:
        # warm up: every matching subscription has received a change (kept out of the figures)
        TrackedRow._default_manager.create(**sample(40_000_000))
        deadline = time.monotonic() + budget
        while receiver.stats()["changes"] < matching and time.monotonic() < deadline:
            time.sleep(0.2)
        receiver.reset()
        process = psutil.Process(worker.pid)
        cpu = sum(process.cpu_times()[:2])
        written = write(duration)
        expected = written * matching
        deadline = time.monotonic() + budget
        while receiver.stats()["changes"] < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        stats = receiver.stats()
        cpu = sum(process.cpu_times()[:2]) - cpu
    cleanup()
    return {
        "subscriptions": count,
        "matching": matching,
        "expected": expected,
        "stats": stats,
        "cpu_per_change": cpu / stats["changes"] if stats["changes"] else None,
        "dispatch": dispatch,
        "full_look": full_look,
    }


def ceiling(receiver: Receiver, seconds: float) -> float:
    """Changes/s that bare ``requests`` loops put into the receiver: CONCURRENCY threads
    (one session each, no database, nothing signed) PUTting bodies of CEILING_BATCH
    changes of the log (as the worker sends them) for ``seconds``: what the machine and
    the receiver take with pubsubpull costing nothing."""
    from benchmarks.benchapp.models import TrackedRow, sample

    query = (
        "SELECT pubsubpull_change_json(c)::text FROM pubsubpull_change c "
        "ORDER BY c.txid, c.id LIMIT %s"
    )
    rows = harness.execute(query, [CEILING_BATCH])
    if len(rows) < CEILING_BATCH:  # a dry run's log: write the changes a body needs
        TrackedRow._default_manager.bulk_create(
            TrackedRow(**sample(50_000_000 + i)) for i in range(CEILING_BATCH)
        )
        rows = harness.execute(query, [CEILING_BATCH])
    if len(rows) < CEILING_BATCH:
        raise RuntimeError(f"the change log holds {len(rows)} changes: is TrackedRow tracked?")
    changes = ", ".join(row[0] for row in rows)
    data = ('{"subscription": "ceiling", "changes": [' + changes + "]}").encode()
    sent = [0] * CONCURRENCY
    failures: list[Exception] = []  # a loop that stopped early would understate the ceiling
    receiver.reset()
    started = time.monotonic()

    def loop(n: int) -> None:
        try:
            with requests.Session() as session:
                while time.monotonic() - started < seconds:
                    session.put(receiver.url, data=data, timeout=30).raise_for_status()
                    sent[n] += 1
        except Exception as error:  # noqa: BLE001 - raised below, in the benchmark's thread
            failures.append(error)

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = sum(sent) * CEILING_BATCH / (time.monotonic() - started)
    receiver.reset()  # the ceiling's receipts are no subscription's
    if failures:
        raise failures[0]
    return rate


# Several workers ---------------------------------------------------------------------------


def _cpu(processes: list[Any]) -> float:
    total = 0.0
    for process in processes:
        try:
            total += sum(process.cpu_times()[:2])
        except Exception:  # noqa: BLE001 - a backend that ended meanwhile
            pass
    return total


def _machine_cpu() -> float:
    import psutil

    times = psutil.cpu_times()
    return float(times.user + times.system)


def drain_with(
    receiver: Receiver, workers: int, subscriptions: int, backlog: int, budget: float
) -> dict[str, Any]:
    """``subscriptions`` subscriptions from the start of a backlog of ``backlog`` changes,
    drained by ``workers`` worker processes (``--concurrency`` CONCURRENCY each): changes/s
    from the first job to the last receipt, and the cores used meanwhile by PostgreSQL,
    the workers, the receiver and the whole machine."""
    from pubsubpull.models import Subscription
    from pubsubpull.positions import START
    from pubsubpull.tasks import defer_delivery

    subscribe_many(receiver.url, subscriptions)
    Subscription.objects.update(cursor=str(START), topics=[], status="paused")
    expected = backlog * subscriptions
    receiver.reset()
    pool = [Worker(CONCURRENCY) for _ in range(workers)]
    try:
        # PostgreSQL's backends come and go (a connection per job): its CPU is what the
        # machine used beyond the workers, the receiver and this process.
        processes = [_process(w.pid) for w in pool]
        receiving, here = [_process(receiver.process.pid)], [_process(os.getpid())]
        total, mine, theirs, rest = (
            _machine_cpu(),
            _cpu(processes),
            _cpu(receiving),
            _cpu(here),
        )
        started = time.time()
        Subscription.objects.update(status="active")
        for subscription_id in Subscription.objects.values_list("pk", flat=True):
            defer_delivery(subscription_id)  # as a sweep would: every one is due
        deadline = time.monotonic() + budget
        while receiver.stats()["changes"] < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        stats = receiver.stats()
        mine, theirs, rest = _cpu(processes) - mine, _cpu(receiving) - theirs, _cpu(here) - rest
        machine = _machine_cpu() - total
        watched = time.time() - started  # the CPU's window, a little past the last receipt
        database = machine - mine - theirs - rest
    finally:
        for worker in pool:
            worker.stop()
    cleanup()
    seconds = stats["last"] - started
    return {
        "workers": workers,
        "received": stats["changes"],
        "expected": expected,
        "rate": stats["changes"] / seconds if seconds > 0 else 0.0,
        "out_of_order": stats["out_of_order"],
        "database_cpu": database / watched,
        "workers_cpu": mine / watched,
        "receiver_cpu": theirs / watched,
        "machine_cpu": machine / watched,
    }


def _process(pid: int) -> Any:
    import psutil

    return psutil.Process(pid)


def several(receiver: Receiver, subscriptions: int, backlog: int, budget: float) -> list[Any]:
    """One worker, then two, on the same backlog, interleaved twice."""
    from benchmarks.benchapp.models import TrackedRow
    from benchmarks.delivery import fill

    cleanup()
    harness.reset_tables(TrackedRow, changes=True)
    fill(backlog)
    runs = []
    for _ in range(2):
        for workers in (1, 2):
            runs.append(drain_with(receiver, workers, subscriptions, backlog, budget))
    return runs


def run(quick: bool, dry_run: bool) -> str:
    sizes = harness.choose(
        quick, dry_run, full=(1, 100, 1000, 10_000), fast=(1, 100, 1000), dry=(1, 10)
    )
    duration = harness.choose(quick, dry_run, full=30.0, fast=10.0, dry=1.0)
    budget = harness.choose(quick, dry_run, full=60.0, fast=20.0, dry=10.0)
    subscriptions = harness.choose(quick, dry_run, full=200, fast=200, dry=10)
    backlog = harness.choose(quick, dry_run, full=2_000, fast=1_000, dry=100)
    with Receiver() as receiver:
        results = [one_size(receiver, n, duration, budget) for n in sizes]
        bare = ceiling(
            receiver, harness.choose(quick, dry_run, full=CEILING_SECONDS, fast=3.0, dry=0.5)
        )
        runs = several(
            receiver,
            subscriptions,
            backlog,
            budget=harness.choose(quick, dry_run, full=180.0, fast=90.0, dry=20.0),
        )
    return (
        report(duration, budget, results, bare)
        + "\n\n"
        + several_report(subscriptions, backlog, runs)
    )


def several_report(subscriptions: int, backlog: int, runs: list[dict[str, Any]]) -> str:
    one = [r["rate"] for r in runs if r["workers"] == 1]
    two = [r["rate"] for r in runs if r["workers"] == 2]
    gain = harness.ratios(two, one)
    cores_one = [r["machine_cpu"] for r in runs if r["workers"] == 1]
    rows = [
        [
            str(r["workers"]),
            f"{r['received']:,} of {r['expected']:,}",
            f"{r['rate']:,.0f}",
            str(r["out_of_order"]),
            f"{r['database_cpu']:.2f}",
            f"{r['workers_cpu']:.2f}",
            f"{r['receiver_cpu']:.2f}",
            f"{r['machine_cpu']:.2f}",
        ]
        for r in runs
    ]
    ordered = all(r["out_of_order"] == 0 for r in runs)
    complete = all(r["received"] >= r["expected"] for r in runs)
    return "\n".join(
        [
            "### Several workers",
            "",
            f"{subscriptions} subscriptions (all topics) from the start of a backlog of "
            f"{backlog:,} changes each, drained by one worker process, then by two (each "
            f"`--concurrency {CONCURRENCY}`), twice, interleaved: changes/s from queueing "
            "every subscription's delivery to the last receipt. The receiver counts, per "
            "subscription, changes at or before one it had already received (out of "
            "order). CPU: cores used on average by the worker processes, by PostgreSQL "
            "(the machine's CPU beyond the workers, the receiver and the benchmark process: "
            "its backends come and go with the jobs' connections), by the receiver, and by "
            f"the whole machine (of {os.cpu_count()} here: a second worker process can add "
            "only what the first leaves).",
            "",
            harness.table(
                [
                    "worker processes",
                    "changes received",
                    "changes/s",
                    "out of order",
                    "PostgreSQL cores",
                    "worker cores",
                    "receiver cores",
                    "machine cores",
                ],
                rows,
            ),
            "",
            f"Goal: two workers ≥ {SEVERAL_GOAL:g}× one: {harness.ratio_cell(gain)}, "
            + harness.verdict(complete and harness.median(gain) >= SEVERAL_GOAL)
            + "; per-subscription order kept: "
            + harness.verdict(ordered)
            + ".",
            "",
            "What the machine allows: one worker's runs kept "
            f"{harness.median(cores_one):.2f} of the machine's {os.cpu_count()} cores busy "
            f"(PostgreSQL, the worker, the receiver and this process) for "
            f"{harness.median(one):,.0f} changes/s; at that CPU per change, "
            f"{SEVERAL_GOAL:g}× takes {SEVERAL_GOAL * harness.median(cores_one):.2f} cores, "
            "before anything a second process adds (its own connections, rounds that share "
            "the subscriptions).",
        ]
    )


def _ms(value: float | None) -> str:
    return "–" if value is None else harness.number(value * 1000)


def report(duration: float, budget: float, results: list[dict[str, Any]], bare: float) -> str:
    rows = []
    for r in results:
        stats = r["stats"]
        share = stats["changes"] / r["expected"] if r["expected"] else 0.0
        cpu = r["cpu_per_change"]
        rows.append(
            [
                f"{r['subscriptions']:,}",
                f"{r['matching']:,}",
                f"{r['expected']:,}",
                f"{share:.1%}",
                _ms(stats["p50"]),
                _ms(stats["p99"]),
                "–" if cpu is None else harness.number(cpu * 1e6),
                _ms(r["dispatch"]),
                _ms(r["full_look"]),
                harness.ratio(r["dispatch"], r["full_look"]),
            ]
        )
    largest = results[-1]
    p99 = largest["stats"]["p99"]
    lines = [
        "## Fan-out",
        "",
        f"Subscriptions of one user to one loopback receiver, topics spread over four sets so "
        f"that a quarter of them match the inserts written; a `TrackedRow` inserted every "
        f"{WRITE_INTERVAL * 1000:g} ms for {duration:g} s while one worker "
        f"(`--concurrency {CONCURRENCY}`) delivers, then {budget:g} s to catch up. Latency: "
        "from the change's transaction start to its receipt, over every delivered change "
        "(1 ms histogram in the receiver). Dispatch: the work of one wake-up's dispatch with "
        "one new change visible (`fanout.concerned`, median of 5), against the sweep's look "
        "at every subscription (`delivery.due_subscriptions`, what every wake-up ran before).",
        "",
        harness.table(
            [
                "subscriptions",
                "matching",
                "deliveries expected",
                "arrived",
                "p50 ms",
                "p99 ms",
                "worker CPU µs per change",
                "dispatch ms",
                "look at all ms",
                "dispatch / look at all",
            ],
            rows,
        ),
        "",
        f"Goal: at {largest['subscriptions']:,} subscriptions p99 ≤ {LATENCY_GOAL:g} s: "
        f"{_ms(p99)} ms, "
        + harness.verdict(p99 is not None and p99 <= LATENCY_GOAL and _complete(largest))
        + "; dispatch work per wake-up flat in the subscription count: "
        + ", ".join(f"{_ms(r['dispatch'])} ms at {r['subscriptions']:,}" for r in results)
        + ".",
        "",
        f"What the machine allows: at {largest['subscriptions']:,} subscriptions, "
        f"{largest['matching']:,} matching each of {1 / WRITE_INTERVAL:g} changes/s need "
        f"{largest['matching'] / WRITE_INTERVAL:,.0f} changes/s delivered. Bare `requests` "
        f"loops ({CONCURRENCY} threads, one session each, no database, nothing signed) "
        f"PUTting bodies of {CEILING_BATCH} changes (the most a batch can hold and meet the "
        f"p99 goal at this rate) to the same receiver put {bare:,.0f} changes/s into it "
        f"({harness.ratio(bare * WRITE_INTERVAL, largest['matching'])} of that need), with "
        f"{os.cpu_count()} cores shared by the senders, the receiver and this process: "
        + (
            "the goal is beyond what this machine and this receiver take, whatever the worker does."
            if bare * WRITE_INTERVAL < largest["matching"]
            else "within this machine."
        ),
    ]
    return "\n".join(lines)


def _complete(result: dict[str, Any]) -> bool:
    return bool(result["stats"]["changes"] >= result["expected"])
