"""Delivery: how fast one worker drains a backlog to a webhook, and how soon a change arrives.

- Throughput: a backlog of N changes (inserts of ``TrackedRow``, 10,000 rows a statement),
  then a subscription from cursor ``0-0`` with ``batch_size`` 500 and one real worker
  (``python -m django procrastinate worker --concurrency 1``). Timed from queueing the first
  delivery job to the receipt of the last change. The ceiling is a bare ``requests`` loop
  PUTting the same bodies (built from the same change JSON) with the same headers to the same
  receiver from this process, in the same repetition.
- Latency: with the worker running and the subscription caught up, one row written every
  5 ms in autocommit; each change's latency is its receipt time at the receiver minus the
  time right after its write returned (same machine, same clock).

The receiver is a threaded ``http.server`` in a process of its own on 127.0.0.1 (HTTP/1.1
keep-alive) that reads each body, parses its JSON and answers 204. :class:`Receiver`,
:class:`Worker` and :func:`fill` are shared with ``benchmarks.memory`` and ``benchmarks.pull``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from benchmarks import harness

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = 500
STATEMENT_ROWS = 10_000  # rows per INSERT statement when filling TrackedRow
WRITE_INTERVAL = 0.005  # seconds between two writes in the latency run (200 changes/s)
FULL = 100_000  # changes in the backlog of a full run
FULL_SECONDS = 30.0  # of writes in the latency run
THROUGHPUT_GOAL = 5_000.0  # changes/s
CEILING_GOAL = 0.5  # of the bare requests loop
P50_GOAL, P99_GOAL = 0.050, 0.250  # seconds
SUBSCRIBER = "bench-subscriber"

# The rows of benchapp.models.sample(i), for i in [%s, %s], in one statement: the same values
# bulk_create would write (checked against sample()), five times faster to produce.
_FILL = """
INSERT INTO benchapp_trackedrow (name, email, amount, active, created, payload)
SELECT 'customer ' || i, 'customer' || i || '@example.com', (i %% 100000) / 100.0, i %% 3 <> 0,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
       jsonb_build_object('n', i, 'tier', (ARRAY['gold', 'silver', 'bronze'])[i %% 3 + 1],
                          'tags', jsonb_build_array('a', 'b'))
FROM generate_series(%s, %s) AS i
"""


def fill(count: int, start: int = 0) -> None:
    """Insert ``count`` TrackedRows (``sample(start)`` on), 10,000 a statement, autocommit.

    Each statement goes through the capture trigger: ``count`` insert changes are logged.
    """
    for first in range(start, start + count, STATEMENT_ROWS):
        harness.execute(_FILL, [first, min(first + STATEMENT_ROWS, start + count) - 1])
    # As autovacuum would soon: statistics for the planner, and no vacuum running mid-measure.
    harness.execute("VACUUM ANALYZE benchapp_trackedrow, pubsubpull_change")


# The receiver: a process of its own --------------------------------------------------------


class _ReceiverState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset(record=False)

    def reset(self, record: bool) -> None:
        self.requests = self.changes = 0
        self.first = self.last = 0.0
        self.record = record
        self.receipts: list[tuple[str, float]] = []  # (pk, receipt time) when recording


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the worker's requests.Session uses it
    state: _ReceiverState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received = time.time()
        changes = json.loads(data)["changes"]
        state = self.state
        with state.lock:
            state.requests += 1
            state.changes += len(changes)
            state.first = state.first or received
            state.last = received
            if state.record:
                state.receipts.extend((c["pk"], received) for c in changes)
        self._answer(204)

    def do_GET(self) -> None:  # /stats or /receipts
        state = self.state
        with state.lock:
            body: Any = {k: getattr(state, k) for k in ("requests", "changes", "first", "last")}
            if self.path == "/receipts":
                body = state.receipts
            self._answer(200, json.dumps(body).encode())

    def do_POST(self) -> None:  # /reset or /reset?record=1
        with self.state.lock:
            self.state.reset(record=self.path.endswith("record=1"))
        self._answer(204)


def serve() -> None:
    """Run the receiver on a free loopback port (printed on stdout) until terminated."""
    _Handler.state = _ReceiverState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Receiver:
    """The loopback webhook receiver process, with its counters over HTTP."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from benchmarks.delivery import serve; serve()"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        port = int(self.process.stdout.readline())
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + "/hook/"
        self.control = requests.Session()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.control.close()
        self.process.terminate()
        self.process.wait(10)

    def reset(self, record: bool = False) -> None:
        """Zero the counters; with ``record``, keep each change's receipt time too."""
        self.control.post(self.base + "/reset" + ("?record=1" if record else "")).raise_for_status()

    def stats(self) -> dict[str, Any]:
        """``{"requests", "changes", "first", "last"}``: counts and receipt times (epoch s)."""
        response = self.control.get(self.base + "/stats")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def receipts(self) -> dict[str, float]:
        """Receipt time of each change recorded since ``reset(record=True)``, by pk."""
        response = self.control.get(self.base + "/receipts")
        response.raise_for_status()
        return {pk: at for pk, at in response.json()}

    def wait_for(self, changes: int, timeout: float, poll: float = 0.02) -> dict[str, Any]:
        """The counters once ``changes`` changes arrived, or when ``timeout`` s have passed."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["changes"] >= changes or time.monotonic() > deadline:
                return stats
            time.sleep(poll)


# The worker: ``python -m django procrastinate worker`` -------------------------------------


class Worker:
    """A real Procrastinate worker process on the benchmark database (log in a temp file)."""

    def __init__(self, concurrency: int = 1) -> None:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            "w+", prefix="pubsubpull-bench-worker-", suffix=".log"
        )
        known = _worker_ids()
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks.settings"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "django", "procrastinate", "worker",
             "--concurrency", str(concurrency), "--queues", "pubsubpull"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not _worker_ids() - known:  # registered: it listens for jobs now
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the worker did not start:\n{self.tail()}")
            time.sleep(0.05)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        """Resident set size of the worker process, in bytes."""
        import psutil  # type: ignore[import-untyped]  # bench extra; no stubs installed

        return int(psutil.Process(self.pid).memory_info().rss)

    def tail(self, lines: int = 30) -> str:
        """The end of the worker's output."""
        self.log.flush()
        return "".join(Path(self.log.name).read_text().splitlines(True)[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful: finishes the job in hand
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _worker_ids() -> set[int]:
    return {row[0] for row in harness.execute("SELECT id FROM procrastinate_workers")}


# Subscriptions -----------------------------------------------------------------------------


def subscriber() -> Any:
    """The superuser owning the benchmark subscriptions. Users are tracked: create it before
    filling a backlog, or its insert is one change more."""
    from django.contrib.auth.models import User

    owner = User.objects.filter(username=SUBSCRIBER).first()
    if owner is None:
        owner = User.objects.create_superuser(SUBSCRIBER, password=uuid.uuid4().hex)
    return owner


def subscribe(target: str, cursor: str = "0-0", name: str = "bench", status: str = "paused") -> Any:
    """The benchmark subscription (created or reset) of :func:`subscriber`, from ``cursor``.

    Paused by default, so that the worker's periodic sweep cannot start its delivery before
    :func:`start_delivery` does.
    """
    from pubsubpull.models import Subscription

    subscription, _ = Subscription.objects.update_or_create(
        owner=subscriber(),
        name=name,
        defaults={
            "target": target, "batch_size": BATCH_SIZE, "cursor": cursor, "status": status,
            "batch_id": "", "batch_end": "", "failures": 0, "next_attempt": None,
            "last_error": "",
        },
    )  # fmt: skip
    return subscription


def pause(subscription: Any) -> None:
    """Stop delivering (the job in hand finishes its batch)."""
    from pubsubpull.models import Subscription

    Subscription.objects.filter(pk=subscription.pk).update(status="paused")


def start_delivery(subscription: Any) -> float:
    """Resume ``subscription`` and queue its first delivery job; the wall-clock time then."""
    from pubsubpull.models import Subscription
    from pubsubpull.tasks import defer_delivery

    started = time.time()
    Subscription.objects.filter(pk=subscription.pk).update(status="active")
    defer_delivery(subscription.pk)
    return started


def cleanup() -> None:
    """Remove the benchmark subscriptions and their waiting jobs (later benchmarks write to
    tracked tables: an active subscription would queue jobs for them)."""
    from pubsubpull.models import Subscription

    Subscription.objects.filter(owner__username=SUBSCRIBER).delete()
    harness.execute("DELETE FROM procrastinate_jobs WHERE queue_name = 'pubsubpull'")


def drain(receiver: Receiver, subscription: Any, changes: int, budget: float) -> tuple[int, float]:
    """Deliver ``subscription`` to ``receiver`` until ``changes`` arrived or ``budget`` s
    passed; the changes received and the seconds from the first job to the last receipt."""
    receiver.reset()
    started = start_delivery(subscription)
    stats = receiver.wait_for(changes, timeout=budget)
    if stats["changes"] < changes:  # out of time: stop, and let the batch in flight land
        pause(subscription)
        time.sleep(1.0)
        stats = receiver.stats()
    elif stats["changes"] > changes:
        raise RuntimeError(f"received {stats['changes']} changes, expected {changes}")
    return int(stats["changes"]), float(stats["last"]) - started


# Throughput --------------------------------------------------------------------------------


def _bodies(subscription: Any) -> list[bytes]:
    """The request bodies the worker sends: the change log in position order, in batches,
    from the same change JSON function, wrapped by pubsubpull's own ``body()``."""
    from pubsubpull import delivery
    from pubsubpull.positions import Position

    rows = harness.execute(
        "SELECT pubsubpull_change_json(c)::text FROM pubsubpull_change c ORDER BY c.txid, c.id"
    )
    changes = [row[0] for row in rows]
    nowhere = Position(0, 0)  # body() reads only the changes of a batch
    batches = (changes[i : i + BATCH_SIZE] for i in range(0, len(changes), BATCH_SIZE))
    return [
        delivery.body(subscription, delivery.Batch(uuid.uuid4().hex, batch, nowhere, nowhere))
        for batch in batches
    ]


def ceiling(url: str, bodies: list[bytes]) -> float:
    """Seconds a bare ``requests`` loop takes to PUT ``bodies`` (one session, keep-alive)."""
    with requests.Session() as session:
        started = time.perf_counter()
        for data in bodies:
            headers = {
                "Content-Type": "application/json", "User-Agent": "pubsubpull",
                "webhook-id": uuid.uuid4().hex, "webhook-timestamp": str(int(time.time())),
            }  # fmt: skip
            response = session.put(url, data=data, headers=headers, timeout=10)
            response.raise_for_status()
        return time.perf_counter() - started


def throughput(receiver: Receiver, count: int, reps: int, budget: float) -> dict[str, Any]:
    """Changes/s of the worker and of the ceiling, ``reps`` times interleaved."""
    subscription = subscribe(receiver.url)
    bodies = _bodies(subscription)
    if sum(body.count(b'"seq"') for body in bodies) != count:
        raise RuntimeError("the change log is not the backlog written")
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(reps):  # interleaved: drift hits both alike
        bare.append(count / min(ceiling(receiver.url, bodies) for _ in range(3)))  # best of 3
        subscribe(receiver.url)  # back to cursor 0-0, paused
        received, seconds = drain(receiver, subscription, count, budget)
        ours.append(received / seconds)
        if received < count:  # too slow to repeat within the time of a benchmark run
            return {"ours": ours, "ceiling": bare, "partial": (received, seconds)}
    return {"ours": ours, "ceiling": bare, "partial": None, "batches": len(bodies)}


# Latency -----------------------------------------------------------------------------------


def latency(receiver: Receiver, duration: float) -> dict[str, Any]:
    """Write a row every 5 ms for ``duration`` s; the commit-to-receipt seconds of each."""
    from benchmarks.benchapp.models import TrackedRow, sample
    from pubsubpull import pull

    subscribe(receiver.url, cursor=str(pull.now()), status="active")
    receiver.reset(record=True)
    committed: dict[str, float] = {}
    count = int(duration / WRITE_INTERVAL)
    started = time.perf_counter()
    for i in range(count):
        pause = started + i * WRITE_INTERVAL - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        row = TrackedRow.objects.create(**sample(10_000_000 + i))
        committed[str(row.pk)] = time.time()
    elapsed = time.perf_counter() - started
    receiver.wait_for(count, timeout=30)
    received = receiver.receipts()
    latencies = sorted(received[pk] - at for pk, at in committed.items() if pk in received)
    return {"latencies": latencies, "rate": count / elapsed, "lost": count - len(latencies)}


def percentile(sorted_values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of sorted values."""
    rank = -(-p * len(sorted_values) // 100)  # ceil
    return sorted_values[max(0, min(len(sorted_values), int(rank)) - 1)]


# The report --------------------------------------------------------------------------------


def notes() -> str:
    """What bounds the figures above (the same whatever they are)."""
    return (
        "Notes. One batch is in flight per subscription, so a worker pays per batch, in "
        "sequence: a Procrastinate job (fetch, finish, the defer of the next one, and a new "
        "database connection per job when `CONN_MAX_AGE` is 0; here it is "
        f"{conn_max_age()}), the page read (PostgreSQL builds the change JSON), the PUT (all "
        "the ceiling pays) and the commits of the bookkeeping (the batch in flight, then the "
        "`Delivery` row with the cursor). A change written while the subscription is caught "
        "up goes through two jobs: `pubsubpull.dispatch` (queued by the trigger) finds the "
        "subscriptions it concerns and queues `pubsubpull.deliver`, which reads and sends. "
        f"{os.cpu_count()} cores are shared by PostgreSQL, the worker, the receiver and this "
        "process."
    )


def conn_max_age() -> str:
    """``CONN_MAX_AGE`` of the default database, in words."""
    from django.conf import settings

    age = settings.DATABASES["default"].get("CONN_MAX_AGE", 0)
    return "unlimited" if age is None else f"{age}"


def scaled(count: int, full: int) -> str:
    """`` (scaled down from N for this run)`` when ``count`` is not the full size."""
    return "" if count == full else f" (scaled down from {full:,} for this run)"


def run(quick: bool, dry_run: bool) -> str:
    """Measure throughput and latency; the markdown section."""
    from benchmarks.benchapp.models import TrackedRow

    count = harness.choose(quick, dry_run, full=FULL, fast=20_000, dry=1_000)
    duration = harness.choose(quick, dry_run, full=FULL_SECONDS, fast=8.0, dry=1.0)
    budget = harness.choose(quick, dry_run, full=120.0, fast=30.0, dry=20.0)  # s per drain
    reps = harness.choose(quick, dry_run, full=3, fast=2, dry=1)

    subscriber()
    harness.reset_tables(TrackedRow, changes=True)
    fill(count)
    try:
        with Receiver() as receiver, Worker():
            result = throughput(receiver, count, reps, budget)
            timing = latency(receiver, duration)
    finally:
        cleanup()
    return report(count, duration, budget, result, timing)


def _per_second(values: list[float]) -> str:
    text = f"{harness.median(values):,.0f}"
    return text if len(values) < 2 else f"{text} ({min(values):,.0f}–{max(values):,.0f})"


def _per_batch(rates: list[float]) -> str:
    return harness.number(BATCH_SIZE / harness.median(rates) * 1000)


def _ms(value: float) -> str:
    return harness.number(value * 1000)


def report(
    count: int,
    duration: float,
    budget: float,
    result: dict[str, Any],
    timing: dict[str, Any],
) -> str:
    ours, bare = result["ours"], result["ceiling"]
    ratios = harness.ratios(ours, bare)
    rate, share = harness.median(ours), harness.median(ratios)
    lat = timing["latencies"]
    p50, p90, p99 = (percentile(lat, p) for p in (50, 90, 99)) if lat else (float("nan"),) * 3
    lines = [
        "## Delivery",
        "",
        f"**Throughput.** A backlog of {count:,} changes{scaled(count, FULL)} (inserts of "
        "`TrackedRow`, about 450 "
        "bytes of change JSON each) drained by one worker (`python -m django procrastinate "
        f"worker --concurrency 1`), batch size {BATCH_SIZE}, to a loopback HTTP receiver (a "
        "threaded `http.server` in its own process that parses each body); timed from queueing "
        "the first delivery job to the receipt of the last change. Ceiling: a bare `requests` "
        "loop PUTting the same bodies with the same headers to the same receiver (best of 3 "
        f"loops). {len(ours)} repetition(s), interleaved with the ceiling.",
        "",
        harness.table(
            ["sender", "changes/s", "ms per batch", "of the ceiling"],
            [
                [
                    "pubsubpull worker",
                    _per_second(ours),
                    _per_batch(ours),
                    harness.ratio_cell(ratios),
                ],
                ["bare `requests` loop (ceiling)", _per_second(bare), _per_batch(bare), "1×"],
            ],
        ),  # fmt: skip
    ]
    if result["partial"]:
        received, seconds = result["partial"]
        lines += [
            "",
            f"The drain did not finish within {budget:g} s: {received:,} of {count:,} changes "
            f"arrived in {seconds:.1f} s (the rate above), so it was stopped and not repeated.",
        ]
    lines += [
        "",
        f"**Latency.** One row written every {WRITE_INTERVAL * 1000:g} ms in autocommit for "
        f"{duration:g} s{scaled(int(duration), int(FULL_SECONDS))} with the worker running "
        f"and the subscription caught up ({timing['rate']:.0f} writes/s achieved); per change, "
        "its receipt time minus the time its write returned.",
        "",
        harness.table(
            ["changes", "p50 ms", "p90 ms", "p99 ms", "max ms", "not received"],
            [
                [
                    f"{len(lat):,}",
                    _ms(p50),
                    _ms(p90),
                    _ms(p99),
                    _ms(lat[-1]) if lat else "–",
                    timing["lost"],
                ]
            ],
        ),
        "",
        "Goals:",
        "",
        f"- throughput ≥ {THROUGHPUT_GOAL:,.0f} changes/s: {rate:,.0f}, "
        f"{harness.verdict(rate >= THROUGHPUT_GOAL and not result['partial'])}",
        f"- ≥ {CEILING_GOAL} of the ceiling: {harness.number(share)}, "
        f"{harness.verdict(share >= CEILING_GOAL)}",
        f"- latency p50 ≤ {P50_GOAL * 1000:g} ms: {_ms(p50)} ms, "
        f"{harness.verdict(p50 <= P50_GOAL and not timing['lost'])}",
        f"- latency p99 ≤ {P99_GOAL * 1000:g} ms: {_ms(p99)} ms, "
        f"{harness.verdict(p99 <= P99_GOAL and not timing['lost'])}",
    ]
    if timing["lost"]:
        lines.append(f"\n{timing['lost']} changes had not arrived 30 s after the last write.")
    lines += ["", notes()]
    return "\n".join(lines)
