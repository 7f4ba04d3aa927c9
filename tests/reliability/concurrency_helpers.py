"""Writers, a recording receiver, a worker subprocess and the delivery checks shared by
the concurrency tests.

A change is known to a test by its key ``(topic, pk, marker)``: every write sets a marker
value never used before (a customer's ``name``, an order's ``note``, a product's ``sku``),
so the writers know exactly which changes their committed transactions made.
"""

from __future__ import annotations

import functools
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
from django.test import Client
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.delivery_helpers import wake
from tests.helpers import current_database_url, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
API = "/pubsubpull"

Key = tuple[str, str, str]  # topic, pk, marker
Position = tuple[int, int]  # (txid, id) of a change "id"
MARKER = {"shop.customer": "name", "shop.order": "note", "shop.product": "sku"}


def position(change: dict[str, Any]) -> Position:
    """A change's position, comparable: ``"<txid>-<id>"`` as ``(txid, id)``."""
    txid, _, number = change["id"].partition("-")
    return int(txid), int(number)


def key(change: dict[str, Any]) -> Key:
    """What a writer knows of a change: topic, primary key and the marker it wrote."""
    document = change["new"] if change["new"] is not None else change["old"]
    return change["topic"], str(change["pk"]), str(document[MARKER[change["model"]]])


# -- HTTP: subscriptions, the receiver, pulling ------------------------------------------


@dataclass(frozen=True)
class Batch:
    webhook_id: str
    changes: list[dict[str, Any]]


@dataclass
class Recorder:
    """A webhook receiver that records every PUT in arrival order and answers 204,
    after ``delay`` seconds (a slow subscriber)."""

    delay: float = 0.0
    batches: list[Batch] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Response:
        payload = json.loads(request.get_data())
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.batches.append(Batch(request.headers.get("webhook-id", ""), payload["changes"]))
        return Response("", status=204)

    def received(self) -> list[Batch]:
        with self.lock:
            return list(self.batches)

    def keys(self) -> set[Key]:
        """Keys of every change received so far (resends included)."""
        return {key(change) for batch in self.received() for change in batch.changes}

    def in_order(self) -> list[dict[str, Any]]:
        """The changes received, each once, after checking at-least-once delivery:
        a batch seen twice (a resend of the batch in flight) carries the same webhook-id
        and the same changes; apart from resends no change comes twice; and the
        changes come in position order."""
        first: dict[str, list[str]] = {}
        changes: list[dict[str, Any]] = []
        for batch in self.received():
            ids = [change["id"] for change in batch.changes]
            if batch.webhook_id in first:
                assert ids == first[batch.webhook_id], "a resend differs from its batch"
                continue
            first[batch.webhook_id] = ids
            changes += batch.changes
        positions = [position(change) for change in changes]
        assert len(set(positions)) == len(positions), "a change came twice in other batches"
        assert positions == sorted(positions), "changes out of position order"
        return changes


def hook(httpserver: HTTPServer, recorder: Recorder, path: str) -> str:
    """Route PUTs of ``path`` on the loopback server to ``recorder``; its URL."""
    httpserver.expect_request(path, method="PUT").respond_with_handler(recorder)
    return str(httpserver.url_for(path))


def start_position(client: Client) -> str:
    """The present position (``GET /changes/?after=now``): what follows is new."""
    response = client.get(f"{API}/changes/?after=now")
    assert response.status_code == 200, response.content
    return str(response.json()["cursor"])


def pull(client: Client, after: str, topics: str = "shop.#") -> list[dict[str, Any]]:
    """Every visible change after ``after``, paging ``GET /changes/`` through ``next``."""
    url: str | None = f"{API}/changes/?after={after}&limit=1000&topics={topics.replace('#', '%23')}"
    changes: list[dict[str, Any]] = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        page = response.json()
        changes += page["results"]
        url = page["next"]
    return changes


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    worker: Worker | None = None,
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds or if the worker
    exited, saying what ``explain`` says and what the worker wrote."""
    deadline = time.monotonic() + timeout
    while not condition():
        done = worker is not None and worker.process.poll() is not None
        if done or time.monotonic() > deadline:
            problem = "the worker exited" if done else f"timed out waiting for {what}"
            details = [explain() if explain else "", worker.log() if worker else ""]
            raise AssertionError("\n".join([problem, *filter(None, details)]))
        time.sleep(0.05)


def missing(recorders: dict[str, Recorder], committed: set[Key], client: Client) -> str:
    """What each subscription lacks, whether the log still has it, and the
    subscriptions' state: for failure messages."""
    lines = []
    for name, recorder in recorders.items():
        lacking = committed - recorder.keys()
        lines.append(
            f"{name}: {len(lacking)} of {len(committed)} missing, e.g. {sorted(lacking)[:5]}"
        )
        if lacking:
            logged = sum(1 for k in logged_keys("0-0").values() if k in lacking)
            lines.append(f"  of which still in pubsubpull_change: {logged}")
        state = client.get(f"{API}/subscriptions/{name}/").json()
        lines.append(f"  state: {state}")
    return "\n".join(lines)


# -- the database ---------------------------------------------------------------------


def connect(autocommit: bool = False) -> psycopg.Connection[Any]:
    """A psycopg connection of its own to the test database."""
    return psycopg.connect(current_database_url(), autocommit=autocommit)


def logged_keys(after: str) -> dict[Position, Key]:
    """The shop changes in ``pubsubpull_change`` after position ``after`` (no horizon)."""
    txid, _, number = after.partition("-")
    with connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT txid::text, id, topic, pk, model, coalesce(new, old) FROM pubsubpull_change"
            " WHERE (txid, id) > (%s::xid8, %s) AND topic LIKE 'shop.%%'",
            [txid, int(number)],
        ).fetchall()
    return {
        (int(t), n): (topic, pk, str(doc[MARKER[model]])) for t, n, topic, pk, model, doc in rows
    }


def row_waits(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Backends of this database waiting for another transaction's row or transaction
    id (``Lock`` / ``transactionid`` or ``tuple``)."""
    return conn.execute(
        "SELECT pid, wait_event_type, wait_event, left(query, 200) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND wait_event_type = 'Lock' AND wait_event IN ('transactionid', 'tuple')"
    ).fetchall()


# -- the worker -------------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    output: IO[bytes]

    def log(self) -> str:
        """The end of the worker's output, for failure messages."""
        self.output.flush()
        return Path(self.output.name).read_bytes()[-4000:].decode(errors="replace")


@contextmanager
def running_worker(tmp_path: Path, concurrency: int = 2) -> Iterator[Worker]:
    """A ``manage.py procrastinate worker`` subprocess of the pubsubpull queue, its
    wake-up watcher running (``wake()`` queues a first dispatch, which also starts the
    watcher of a worker launched otherwise); stopped at exit."""
    with open(tmp_path / "worker.log", "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "procrastinate",
                "worker",
                "--queues",
                "pubsubpull",
                "--concurrency",
                str(concurrency),
            ],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wake()
            yield Worker(process, output)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- writers --------------------------------------------------------------------------

#: Errors counted per run, by kind; anything else is counted by its class name.
DEADLOCK = "deadlock_detected"
SERIALIZATION = "serialization_failure"


@dataclass
class Outcome:
    """What writers did: the keys of committed changes, rolled back ones, and errors."""

    committed: set[Key] = field(default_factory=set)
    rolled_back: set[Key] = field(default_factory=set)
    commits: int = 0
    rollbacks: int = 0  # on purpose
    errors: Counter[str] = field(default_factory=Counter)  # aborted by PostgreSQL

    def merge(self, other: Outcome) -> None:
        self.committed |= other.committed
        self.rolled_back |= other.rolled_back
        self.commits += other.commits
        self.rollbacks += other.rollbacks
        self.errors.update(other.errors)


def error_kind(error: psycopg.Error) -> str:
    if isinstance(error, psycopg.errors.DeadlockDetected):
        return DEADLOCK
    if isinstance(error, psycopg.errors.SerializationFailure):
        return SERIALIZATION
    return type(error).__name__


@dataclass
class Workload:
    """Rows shared by the writers, and how their transactions look."""

    customers: list[int]
    orders: list[int]
    tag: str  # marker prefix of this run
    long_share: float = 0.05  # transactions that hold their locks 0.05-0.25 s
    rollback_share: float = 0.15  # transactions rolled back on purpose
    autocommit_share: float = 0.25  # single autocommit statements
    pause: tuple[float, float] = (0.002, 0.01)  # seconds between two transactions


def write(workload: Workload, number: int, seed: int, deadline: float) -> Outcome:
    """One writer thread's loop until ``deadline`` (monotonic), on connections of its own.

    Transactions lock the rows they update first, in primary key order (customers, then
    orders), so they cannot deadlock with each other; then they update those rows, insert
    and delete, in an order that varies. Some are long, some rolled back on purpose, some
    single autocommit statements.
    """
    rng = random.Random(seed)
    outcome = Outcome()
    with connect() as conn, connect(autocommit=True) as auto:
        for session in (conn, auto):
            # a blocked writer fails (counted) rather than hangs the test
            session.execute("SET lock_timeout = '20s'")
            session.execute("SET statement_timeout = '30s'")
        conn.commit()
        count = 0
        while time.monotonic() < deadline:
            count += 1
            tag = f"{workload.tag}w{number}t{count}"
            try:
                if rng.random() < workload.autocommit_share:
                    outcome.committed |= set(_autocommit(auto, rng, workload, tag))
                    outcome.commits += 1
                else:
                    keys = _transaction(conn, rng, workload, tag)
                    if rng.random() < workload.rollback_share:
                        conn.rollback()
                        outcome.rolled_back |= set(keys)
                        outcome.rollbacks += 1
                    else:
                        conn.commit()
                        outcome.committed |= set(keys)
                        outcome.commits += 1
            except psycopg.Error as error:
                outcome.errors[error_kind(error)] += 1
                conn.rollback()
            time.sleep(rng.uniform(*workload.pause))
    return outcome


def _autocommit(
    auto: psycopg.Connection[Any], rng: random.Random, workload: Workload, tag: str
) -> list[Key]:
    choice = rng.randrange(3)
    if choice == 0:
        customer = rng.choice(workload.customers)
        auto.execute("UPDATE shop_customer SET name = %s WHERE id = %s", [tag, customer])
        return [("shop.customer.update", str(customer), tag)]
    if choice == 1:
        return _insert_product(auto, tag)
    return _insert_order(auto, rng.choice(workload.customers), tag)


def _transaction(
    conn: psycopg.Connection[Any], rng: random.Random, workload: Workload, tag: str
) -> list[Key]:
    customers = sorted(rng.sample(workload.customers, rng.randint(1, 3)))
    orders = sorted(rng.sample(workload.orders, rng.randint(0, 3)))
    conn.execute(
        "SELECT id FROM shop_customer WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [customers]
    )
    if orders:
        conn.execute(
            "SELECT id FROM shop_order WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [orders]
        )
    steps: list[Callable[[str], list[Key]]] = []
    for customer in customers:
        steps.append(functools.partial(_update_customer, conn, customer))
    for order in orders:
        steps.append(functools.partial(_update_order, conn, order))
    if len(customers) > 1 and rng.random() < 0.3:  # one statement, several rows
        steps.append(functools.partial(_update_customers, conn, customers))
    if rng.random() < 0.3:  # a new order of a customer it holds (its key share is ours)
        owner = rng.choice(customers)
        steps.append(functools.partial(_insert_order, conn, owner, delete=rng.random() < 0.5))
    if rng.random() < 0.2:
        steps.append(functools.partial(_insert_product, conn))
    rng.shuffle(steps)
    keys: list[Key] = []
    for index, step in enumerate(steps):
        keys += step(f"{tag}s{index}")
        if index == 0 and rng.random() < workload.long_share:
            time.sleep(rng.uniform(0.05, 0.25))  # a long transaction, holding its row locks
    return keys


def _update_customer(conn: psycopg.Connection[Any], customer: int, marker: str) -> list[Key]:
    conn.execute("UPDATE shop_customer SET name = %s WHERE id = %s", [marker, customer])
    return [("shop.customer.update", str(customer), marker)]


def _update_customers(
    conn: psycopg.Connection[Any], customers: list[int], marker: str
) -> list[Key]:
    conn.execute(
        "UPDATE shop_customer SET name = %s || '-' || id::text WHERE id = ANY(%s)",
        [marker, customers],
    )
    return [("shop.customer.update", str(c), f"{marker}-{c}") for c in customers]


def _update_order(conn: psycopg.Connection[Any], order: int, marker: str) -> list[Key]:
    conn.execute(
        "UPDATE shop_order SET note = %s, total = total + 1 WHERE id = %s", [marker, order]
    )
    return [("shop.order.update", str(order), marker)]


def _insert_order(
    conn: psycopg.Connection[Any], customer: int, marker: str, delete: bool = False
) -> list[Key]:
    row = conn.execute(
        "INSERT INTO shop_order (customer_id, total, note, created) VALUES (%s, 1, %s, now())"
        " RETURNING id",
        [customer, marker],
    ).fetchone()
    assert row is not None
    keys = [("shop.order.insert", str(row[0]), marker)]
    if delete:
        conn.execute("DELETE FROM shop_order WHERE id = %s", [row[0]])
        keys.append(("shop.order.delete", str(row[0]), marker))
    return keys


def _insert_product(conn: psycopg.Connection[Any], marker: str) -> list[Key]:
    row = conn.execute(
        "INSERT INTO shop_product (sku, name, price) VALUES (%s, 'p', 1) RETURNING id", [marker]
    ).fetchone()
    assert row is not None
    return [("shop.product.insert", str(row[0]), marker)]


def run_writers(workload: Workload, threads: int, seconds: float, seed: int) -> Outcome:
    """``threads`` writers for ``seconds``; their merged outcome."""
    deadline = time.monotonic() + seconds
    results: list[Outcome | BaseException] = []
    lock = threading.Lock()

    def target(number: int) -> None:
        try:
            result: Outcome | BaseException = write(workload, number, seed * 100 + number, deadline)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            result = error
        with lock:
            results.append(result)

    workers = [threading.Thread(target=target, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=seconds + 90)
    assert not any(t.is_alive() for t in workers), "a writer is stuck"
    total = Outcome()
    for result in results:
        if isinstance(result, BaseException):
            raise result
        total.merge(result)
    return total
