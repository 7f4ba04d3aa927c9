"""Memory: the resident size of a delivery worker before and after draining a large backlog.

A backlog of N changes (inserts of ``TrackedRow``), one subscription from cursor ``0-0`` with
``batch_size`` 500 to the loopback receiver of ``benchmarks.delivery``, one real worker
(``python -m django procrastinate worker --concurrency 1``). The worker's RSS (``psutil``) is
read once it has started and is idle, then every 0.5 s during the drain (the peak), and at the
end, after the last change arrived and the worker went idle again.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import harness
from benchmarks.delivery import (
    Receiver,
    Worker,
    cleanup,
    fill,
    pause,
    scaled,
    start_delivery,
    subscribe,
)

FULL = 1_000_000  # changes in the backlog of a full run
GROWTH_GOAL = 50 * 2**20  # bytes
MB = 2**20


def drain(worker: Worker, receiver: Receiver, count: int, budget: float) -> dict[str, Any]:
    """Drain the backlog (at most ``budget`` s) sampling the worker's RSS."""
    subscription = subscribe(receiver.url)
    time.sleep(1.0)  # settled: imports done, connections open
    start = worker.rss()
    receiver.reset()
    started = start_delivery(subscription)
    peak, deadline = start, time.monotonic() + budget
    while (stats := receiver.stats())["changes"] < count and time.monotonic() < deadline:
        peak = max(peak, worker.rss())
        time.sleep(0.5)
    if stats["changes"] < count:
        pause(subscription)
    time.sleep(1.0)  # the job in hand finishes; the worker is idle again
    stats = receiver.stats()
    end = worker.rss()
    return {
        "start": start,
        "peak": max(peak, end),
        "end": end,
        "received": int(stats["changes"]),
        "seconds": float(stats["last"]) - started,
    }


def run(quick: bool, dry_run: bool) -> str:
    """Fill the backlog, drain it with one worker; the markdown section."""
    from benchmarks.benchapp.models import TrackedRow
    from benchmarks.delivery import subscriber

    count = harness.choose(quick, dry_run, full=FULL, fast=100_000, dry=2_000)
    budget = harness.choose(quick, dry_run, full=300.0, fast=40.0, dry=20.0)  # s

    subscriber()
    harness.reset_tables(TrackedRow, changes=True)
    fill(count)
    try:
        with Receiver() as receiver, Worker() as worker:
            result = drain(worker, receiver, count, budget)
    finally:
        cleanup()
    harness.reset_tables(TrackedRow, changes=True)
    return report(count, budget, result)


def report(count: int, budget: float, result: dict[str, Any]) -> str:
    start, peak, end = result["start"], result["peak"], result["end"]
    growth = end - start
    received, seconds = result["received"], result["seconds"]
    done = received >= count
    lines = [
        "## Memory",
        "",
        f"Resident set size of one worker (`procrastinate worker --concurrency 1`) draining a "
        f"backlog of {count:,} changes{scaled(count, FULL)}, batch size 500, to the loopback "
        "receiver of the "
        "delivery benchmark: once started and idle, the peak of samples every 0.5 s, and idle "
        "again after the last change arrived. One run.",
        "",
        harness.table(
            ["changes delivered", "seconds", "RSS start MB", "peak MB", "end MB", "growth MB"],
            [
                [
                    f"{received:,}",
                    f"{seconds:.1f}",
                    f"{start / MB:.1f}",
                    f"{peak / MB:.1f}",
                    f"{end / MB:.1f}",
                    f"{growth / MB:+.1f}",
                ]
            ],
        ),
        "",
        "Goals:",
        "",
        f"- growth under {GROWTH_GOAL // MB} MB after draining {count:,} changes: "
        f"{growth / MB:+.1f} MB, {harness.verdict(done and growth < GROWTH_GOAL)}",
    ]
    if not done:
        lines.append(
            f"\nThe drain did not finish within {budget:g} s ({received:,} of {count:,} "
            "changes): the growth above is after that part only."
        )
    return "\n".join(lines)
