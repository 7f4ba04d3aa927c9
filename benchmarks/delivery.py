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
- Latency beside other subscriptions: the same writes with 2 or 20 subscriptions, all
  healthy or one of them faulty (answering 500, or answering after the worker's
  ``DELIVERY_TIMEOUT``), each with a worker of its own at ``--concurrency`` 2 (and 4):
  the healthy subscriptions' latency.

The receiver is a threaded ``http.server`` in a process of its own on 127.0.0.1 (HTTP/1.1
keep-alive) that reads each body, parses its JSON and answers 204 (``/dead/``: 500;
``/slow/<seconds>/``: 204 that late). :class:`Receiver`, :class:`Worker` and :func:`fill` are
shared with ``benchmarks.memory``, ``benchmarks.pull`` and ``benchmarks.writers``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
BESIDE_SECONDS = 20.0  # of writes in each run of latency beside other subscriptions
THROUGHPUT_GOAL = 5_000.0  # changes/s
CEILING_GOAL = 0.5  # of the bare requests loop
P50_GOAL, P99_GOAL = 0.050, 0.250  # seconds
SUBSCRIBER = "bench-subscriber"
SETTINGS_VARIABLE = "PUBSUBPULL_BENCH_SETTINGS"  # read by benchmarks.settings

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
        # (subscription, pk, receipt time) of each change, when recording
        self.receipts: list[tuple[str, str, float]] = []


class QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive (as the worker's ``requests.Session`` uses it), no log lines."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


class _Handler(QuietHandler):
    state: _ReceiverState

    def do_PUT(self) -> None:  # /hook/: 204; /dead/: 500; /slow/<seconds>/: 204 that late
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received = time.time()
        if self.path.startswith("/dead/"):
            self._answer(500, b'{"error": "dead on purpose"}')
            return
        if self.path.startswith("/slow/"):
            time.sleep(float(self.path.split("/")[2]))
            with contextlib.suppress(OSError):  # the sender gave up and closed
                self._answer(204)
            return
        body = json.loads(data)
        changes, name = body["changes"], body["subscription"]
        state = self.state
        with state.lock:
            state.requests += 1
            state.changes += len(changes)
            state.first = state.first or received
            state.last = received
            if state.record:
                state.receipts.extend((name, c["pk"], received) for c in changes)
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


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 dropped connections when two workers' 64 sender
    # threads connected at once: their SYNs were retried after 1-3 s, which the rounds
    # took for slow targets. gunicorn listens with a backlog of 2,048 by default.
    request_queue_size = 1024


def serve_forever(handler: type[BaseHTTPRequestHandler]) -> None:
    """Serve ``handler`` on a free loopback port (printed on stdout) until terminated."""
    server = _Server(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def serve() -> None:
    """Run the receiver until terminated (see :func:`serve_forever`)."""
    _Handler.state = _ReceiverState()
    serve_forever(_Handler)


def start_server(module: str) -> tuple[subprocess.Popen[str], str]:
    """A process running ``module.serve()``, and its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-c", f"from {module} import serve; serve()"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, f"http://127.0.0.1:{int(process.stdout.readline())}"


class Receiver:
    """The loopback webhook receiver process, with its counters over HTTP."""

    def __init__(self) -> None:
        self.process, self.base = start_server("benchmarks.delivery")
        self.url = self.base + "/hook/"
        self.dead_url = self.base + "/dead/"  # answers 500
        self.control = requests.Session()

    def slow_url(self, seconds: float) -> str:
        """A target that answers 204 only after ``seconds`` (past the sender's timeout)."""
        return f"{self.base}/slow/{seconds:g}/"

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

    def receipts(self) -> dict[str, dict[str, float]]:
        """Receipt time of each change recorded since ``reset(record=True)``, by
        subscription name and pk (the first receipt of a change delivered twice)."""
        response = self.control.get(self.base + "/receipts")
        response.raise_for_status()
        found: dict[str, dict[str, float]] = {}
        for name, pk, at in response.json():
            found.setdefault(name, {}).setdefault(pk, at)
        return found

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
    """A real Procrastinate worker process on the benchmark database (log in a temp file).

    ``settings`` override keys of ``PUBSUBPULL`` in the worker only (``benchmarks.settings``
    reads them from the ``PUBSUBPULL_BENCH_SETTINGS`` environment variable, as JSON).
    """

    def __init__(self, concurrency: int = 1, settings: dict[str, Any] | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            "w+", prefix="pubsubpull-bench-worker-", suffix=".log"
        )
        known = _worker_ids()
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks.settings"}
        if settings:
            env[SETTINGS_VARIABLE] = json.dumps(settings)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "procrastinate",
                "worker",
                "--concurrency",
                str(concurrency),
                "--queues",
                "pubsubpull",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
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
            "target": target,
            "batch_size": BATCH_SIZE,
            "cursor": cursor,
            "status": status,
            "batch_id": "",
            "batch_end": "",
            "failures": 0,
            "next_attempt": None,
            "last_error": "",
        },
    )
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
                "Content-Type": "application/json",
                "User-Agent": "pubsubpull",
                "webhook-id": uuid.uuid4().hex,
                "webhook-timestamp": str(int(time.time())),
            }
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


def wake_worker() -> None:
    """Queue a dispatch, so that a run starts at once whatever the worker's watcher saw
    before it was measured."""
    from procrastinate import exceptions

    from pubsubpull.tasks import dispatch

    with contextlib.suppress(exceptions.AlreadyEnqueued):
        dispatch.defer()


def first_delivery(
    receiver: Receiver, subscriptions: int, wake: bool = True, timeout: float = 60.0
) -> float:
    """Write one row and wait until ``subscriptions`` healthy subscriptions received it; the
    seconds that took (a fresh worker's start-up, kept out of the latency figures). With
    ``wake``, a dispatch is queued after the write (:func:`wake_worker`)."""
    from benchmarks.benchapp.models import TrackedRow, sample

    receiver.reset()
    started = time.perf_counter()
    TrackedRow._default_manager.create(**sample(9_999_999))
    if wake:
        wake_worker()
    stats = receiver.wait_for(subscriptions, timeout=timeout)
    if stats["changes"] < subscriptions:
        raise RuntimeError(f"no delivery within {timeout:g} s of the first write")
    return time.perf_counter() - started


def paced(count: int, interval: float) -> Iterator[int]:
    """0 to ``count`` - 1, the i-th ``i * interval`` seconds after the first."""
    started = time.perf_counter()
    for i in range(count):
        pause = started + i * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        yield i


def latency(receiver: Receiver, duration: float, healthy: list[str]) -> dict[str, Any]:
    """Write a row every 5 ms for ``duration`` s; the commit-to-receipt seconds of each change
    at each of the ``healthy`` subscriptions (all of them in one sorted list)."""
    from benchmarks.benchapp.models import TrackedRow, sample

    receiver.reset(record=True)
    committed: dict[str, float] = {}
    count = int(duration / WRITE_INTERVAL)
    started = time.perf_counter()
    for i in paced(count, WRITE_INTERVAL):
        row = TrackedRow._default_manager.create(**sample(10_000_000 + i))
        committed[str(row.pk)] = time.time()
    elapsed = time.perf_counter() - started
    expected = count * len(healthy)
    receiver.wait_for(expected, timeout=30)
    received = receiver.receipts()
    latencies: list[float] = []
    p99s = []  # of each subscription
    for name in healthy:
        got = received.get(name, {})
        mine = sorted(got[pk] - at for pk, at in committed.items() if pk in got)
        if mine:
            p99s.append(percentile(mine, 99))
        latencies += mine
    latencies.sort()
    return {
        "latencies": latencies,
        "rate": count / elapsed,
        "lost": expected - len(latencies),
        "worst_p99": max(p99s, default=float("nan")),
    }


# Latency beside other subscriptions --------------------------------------------------------

# The workers of these runs: attempts time out after 1 s, and a failing subscription is
# retried every 0.5-1 s for the whole run (never `failing`), so the faulty subscription keeps
# taking worker time throughout, a harsher case than the defaults (retries backing off to an
# hour, `failing` after 10).
RETRIES = 1000  # a retry a second: never used up in a run
FAULT_SETTINGS: dict[str, Any] = {"DELIVERY_TIMEOUT": 1.0, "RETRY_SCHEDULE": [1.0] * RETRIES}
SLOW_SECONDS = 3.0  # the slow target answers this late: after the timeout, every time
FAULTS = {"": "none", "dead": "answers 500", "slow": "answers after the timeout"}


@dataclass(frozen=True)
class Scenario:
    """Subscriptions (the faulty one included), what is wrong with one of them, the worker."""

    subscriptions: int
    fault: str  # a key of FAULTS; "" when all are healthy
    concurrency: int

    @property
    def healthy(self) -> int:
        return self.subscriptions - (1 if self.fault else 0)


def scenarios(quick: bool, dry_run: bool) -> list[Scenario]:
    """The runs of this mode: 2 and 20 subscriptions, all healthy (the control), one dead or
    one slow, ``--concurrency`` 2; in a full run also the faulty ones at ``--concurrency`` 4."""
    if dry_run:
        return [Scenario(2, "dead", 2), Scenario(20, "slow", 2)]
    chosen = [Scenario(n, fault, 2) for n in (2, 20) for fault in FAULTS]
    if not quick:
        chosen += [Scenario(n, fault, 4) for n in (2, 20) for fault in ("dead", "slow")]
    return chosen


def beside(
    receiver: Receiver, scenario: Scenario, duration: float, wake: bool = True
) -> dict[str, Any]:
    """The latency of the healthy subscriptions of ``scenario``, with a worker of its own
    (:data:`FAULT_SETTINGS`); also the faulty subscription's attempts meanwhile, and how
    long the first delivery took after the worker started (``wake``: see
    :func:`first_delivery`)."""
    from django.utils import timezone

    from pubsubpull import reads
    from pubsubpull.models import Delivery

    cleanup()
    cursor = str(reads.now())
    healthy = [f"healthy-{i}" for i in range(scenario.healthy)]
    for name in healthy:
        subscribe(receiver.url, cursor=cursor, name=name, status="active")
    if scenario.fault:
        target = receiver.dead_url if scenario.fault == "dead" else receiver.slow_url(SLOW_SECONDS)
        subscribe(target, cursor=cursor, name="faulty", status="active")
    try:
        with Worker(scenario.concurrency, settings=FAULT_SETTINGS):
            warm = first_delivery(receiver, len(healthy), wake=wake)
            since = timezone.now()
            timing = latency(receiver, duration, healthy)
            attempts = Delivery.objects.filter(
                subscription__owner__username=SUBSCRIBER,
                subscription__name="faulty",
                created__gte=since,
            )
            timing["faulty"] = (attempts.count(), attempts.filter(status_code=None).count())
            timing["warm"] = warm
    finally:
        cleanup()
    print(
        f"delivery: {scenario}: first delivery {warm:.1f} s after the worker started, p99 "
        f"{_ms(percentile(timing['latencies'], 99)) if timing['latencies'] else '–'} ms",
        flush=True,
    )
    return timing


def percentile(sorted_values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of sorted values."""
    rank = -(-p * len(sorted_values) // 100)  # ceil
    return sorted_values[max(0, min(len(sorted_values), int(rank)) - 1)]


# The report --------------------------------------------------------------------------------


def notes() -> str:
    """What bounds the figures above (the same whatever they are)."""
    return (
        "Notes. One batch is in flight per subscription. A backlog is drained by a "
        "Procrastinate job of its own (fetched, finished and queued again once per turn of "
        "up to a second; the worker keeps its connections for "
        f"{worker_conn_max_age()} s, `WORKER_CONN_MAX_AGE`, since the project's "
        f"`CONN_MAX_AGE` is {conn_max_age()}), which pays per batch the page read "
        "(PostgreSQL builds the change JSON), the PUT (all the ceiling pays) and the commit "
        "of the `Delivery` row with the cursor, the next page read while a batch is sent "
        "and put in flight by that commit. A change written while the subscription is caught "
        f"up reaches the worker by its wake-up watcher (`pubsubpull.wakeups`), {watcher()}; "
        "when the safe horizon moves past new changes it queues `pubsubpull.dispatch`, "
        "which finds the subscriptions with changes waiting and delivers to the caught-up "
        "ones in one round (`pubsubpull.rounds`: one page read per group of subscriptions "
        "that read the same, every batch sent at once, the answers recorded in waves); a "
        "faulty subscription (failures, slow) gets a `pubsubpull.deliver` job of its own. "
        "Nothing is queued from inside the writer's transaction. "
        f"{os.cpu_count()} cores are shared by PostgreSQL, the worker, the receiver and this "
        "process."
    )


def watcher() -> str:
    """How the worker's wake-up watcher hears of new changes, in words."""
    from pubsubpull import conf

    interval = float(conf.get("POLL_INTERVAL"))
    return (
        "a connection of its own that looks at the log every "
        f"`POLL_INTERVAL` ({interval * 1000:g} ms here)"
    )


def worker_conn_max_age() -> int:
    """``PUBSUBPULL["WORKER_CONN_MAX_AGE"]`` of the workers (their overrides included)."""
    from pubsubpull import conf

    return int(FAULT_SETTINGS.get("WORKER_CONN_MAX_AGE", conf.settings.WORKER_CONN_MAX_AGE))


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
    from pubsubpull import reads

    count = harness.choose(quick, dry_run, full=FULL, fast=20_000, dry=1_000)
    duration = harness.choose(quick, dry_run, full=FULL_SECONDS, fast=8.0, dry=1.0)
    beside_duration = harness.choose(quick, dry_run, full=BESIDE_SECONDS, fast=6.0, dry=1.0)
    budget = harness.choose(quick, dry_run, full=120.0, fast=30.0, dry=20.0)  # s per drain
    reps = harness.choose(quick, dry_run, full=3, fast=2, dry=1)

    subscriber()
    harness.reset_tables(TrackedRow, changes=True)
    fill(count)
    with Receiver() as receiver:
        try:
            with Worker():
                result = throughput(receiver, count, reps, budget)
                subscribe(receiver.url, cursor=str(reads.now()), status="active")
                timing = latency(receiver, duration, ["bench"])
        finally:
            cleanup()
        # The first run shows how long a fresh worker takes to deliver at all.
        others = [
            (s, beside(receiver, s, beside_duration, wake=i > 0))
            for i, s in enumerate(scenarios(quick, dry_run))
        ]
    return report(count, duration, budget, result, timing, beside_duration, others)


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
    beside_duration: float,
    others: list[tuple[Scenario, dict[str, Any]]],
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
        ),
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
    if others:
        lines += ["", beside_report(beside_duration, others)]
    lines += ["", notes()]
    return "\n".join(lines)


def _latency_ok(timing: dict[str, Any]) -> tuple[float, float, bool]:
    """p50, p99 and whether both goals were met with nothing lost."""
    lat = timing["latencies"]
    if not lat:
        return float("nan"), float("nan"), False
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    return p50, p99, p50 <= P50_GOAL and p99 <= P99_GOAL and not timing["lost"]


def beside_report(duration: float, others: list[tuple[Scenario, dict[str, Any]]]) -> str:
    """The latency of healthy subscriptions beside a dead or slow one, and its goals."""
    rows, goals = [], []
    for scenario, timing in others:
        lat = timing["latencies"]
        p50, p99, ok = _latency_ok(timing)
        attempts, timeouts = timing["faulty"]
        faulty = "–"
        if scenario.fault == "dead":
            faulty = f"{attempts} (500)"
        elif scenario.fault == "slow":
            faulty = f"{attempts} ({timeouts} timed out)"
        rows.append(
            [
                f"{scenario.subscriptions}",
                FAULTS[scenario.fault],
                f"{scenario.concurrency}",
                f"{timing['rate']:.0f}",
                f"{len(lat):,}",
                _ms(p50),
                _ms(percentile(lat, 90)) if lat else "–",
                _ms(p99),
                _ms(lat[-1]) if lat else "–",
                _ms(timing["worst_p99"]),
                timing["lost"],
                faulty,
                harness.verdict(ok),
            ]
        )
        beside = f", one {FAULTS[scenario.fault]}" if scenario.fault else ", all healthy"
        goals.append(
            f"- {scenario.subscriptions} subscriptions{beside}, `--concurrency "
            f"{scenario.concurrency}`: p50 {_ms(p50)} ms, p99 {_ms(p99)} ms"
            + (f", {timing['lost']:,} not received" if timing["lost"] else "")
            + f": {harness.verdict(ok)}"
        )
    timeout = FAULT_SETTINGS["DELIVERY_TIMEOUT"]
    started = others[0][1]["warm"]
    return "\n".join(
        [
            "**Latency beside other subscriptions.** The same writes (one row every "
            f"{WRITE_INTERVAL * 1000:g} ms, {duration:g} s"
            f"{scaled(int(duration), int(BESIDE_SECONDS))}) with several subscriptions to "
            "the receiver, one of which may be faulty: "
            "**answers 500**, or **answers after the timeout** (it answers "
            f"{SLOW_SECONDS:g} s late; the worker's `DELIVERY_TIMEOUT` is {timeout:g} s). "
            "Each run has a worker of its own (`--concurrency` as shown) with "
            f'`PUBSUBPULL` overrides `{{"DELIVERY_TIMEOUT": {timeout:g}, "RETRY_SCHEDULE": '
            f"[1.0] * {RETRIES}}}` (through `{SETTINGS_VARIABLE}`): "
            "the faulty subscription is retried every 0.9-1.1 s throughout and never becomes "
            "`failing`, a harsher case than the defaults, whose retries back off. Latency of "
            "the healthy subscriptions only (every change at every one of them), measured "
            "after a first change reached them all; **worst p99**: the p99 of the healthy "
            "subscription that fared worst; **faulty attempts**: the faulty subscription's "
            "delivery attempts meanwhile.",
            "",
            harness.table(
                [
                    "subscriptions",
                    "faulty one",
                    "concurrency",
                    "writes/s",
                    "healthy receipts",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                    "worst p99 ms",
                    "not received",
                    "faulty attempts",
                    "goal",
                ],
                rows,
            ),
            "",
            f"Goals: healthy subscriptions' p50 ≤ {P50_GOAL * 1000:g} ms and p99 ≤ "
            f"{P99_GOAL * 1000:g} ms at 200 changes/s, beside a dead or slow one:",
            "",
            *goals,
            "",
            f"A fresh worker's first delivery came {started:.1f} s after it had registered and "
            "a row was written (first run above, nothing else queued): `manage.py "
            "procrastinate worker` starts its wake-up watcher when Django is ready. The other "
            "runs queue a `pubsubpull.dispatch` after that first write.",
        ]
    )
