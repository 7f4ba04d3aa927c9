"""Faults: workers killed mid-delivery and mid-dispatch, database connections terminated,
the database stopped and started, a failing subscriber, many long polls at once.

Real PostgreSQL, real worker and web server subprocesses, real loopback HTTP. Each test
asserts that every committed change is received (or pulled), in position order per
subscription, with duplicates only as at-least-once allows: the batch in flight, resent
with the same ``webhook-id``.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from pubsubpull import reads, tasks
from pubsubpull.auth import create_token
from pubsubpull.models import Delivery, Subscription
from test_project.shop.models import Customer
from tests.delivery_helpers import wake
from tests.helpers import current_database_url

from .fault_helpers import (
    EmbeddedPostgres,
    HookServer,
    Managed,
    Puller,
    Writer,
    assert_complete_in_order,
    assert_delivered,
    backends,
    committed,
    insert_customers,
    job_statuses,
    jobs,
    run_manage,
    runserver,
    terminate_backends,
    wait_until,
    worker_command,
)

# Sizes and bounds (seconds). "Within a minute" bounds are requirements, not measurements.
WITHIN = 60.0  # a subscription drains, everything arrives, a backend count settles
BULK_CHANGES = 20_000  # test 1: changes delivered while the worker is killed
BULK_BATCH = 200
BULK_RECEIVER_DELAY = 0.01  # the receiver answers each batch this late
KILLS_AT = (10, 40, 70)  # test 1: SIGKILL while holding the answer to the request after these
FORCED_KILL = 1  # ... this one while another delivery job of the subscription is queued
DISPATCH_SUBSCRIPTIONS = 200  # test 2
DISPATCH_WRITES = 5  # customers written before the kill, and again after the restart
TERMINATIONS = 3  # test 3: rounds of pg_terminate_backend on the worker and the web server
TERMINATE_EVERY = 2.0
DOWN_FOR = 8.0  # test 4: seconds the database stays stopped
WRITE_AROUND = 3.0  # test 4: seconds of writes before the stop and after the start
FLAKY_WRITES = 6  # test 5: transactions of FLAKY_ROWS customers per phase
FLAKY_ROWS = 10
FLAKY_BATCH = 30  # few batches: a retry waits for the worker's next poll (5 s), not its delay
FLAKY_SETTINGS = {  # test 5, for the worker subprocess
    "DELIVERY_TIMEOUT": 0.5,
    "RETRY_SCHEDULE": [0.05, 0.1, 0.2, 0.4] + [0.5] * 1000,  # never used up in the test
}
SLOW_ANSWER = 1.5  # test 5: past DELIVERY_TIMEOUT
FAIL_RATE = 0.3  # test 5: share of 500 answers once the subscriber is back
LONG_POLLS = 200  # test 6: more than MAX_WAITING (50) wait at once in the web server
LONG_POLL_WAIT = 25
POLL_WRITES = 10  # test 6: transactions of POLL_ROWS customers, POLL_PAUSE apart
POLL_ROWS = 20
POLL_PAUSE = 0.3

CUSTOMERS = ["shop.customer.*"]
TRANSACTIONAL = pytest.mark.django_db(transaction=True)


@pytest.fixture
def url() -> str:
    """The test database's URL, with no pubsubpull job left from earlier tests (the
    test flush does not empty Procrastinate's tables)."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs WHERE queue_name = 'pubsubpull'")
    return current_database_url()


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    """Closes what a test started (processes, servers, databases), last first."""
    with contextlib.ExitStack() as stack:
        yield stack


def started(stack: contextlib.ExitStack, managed: Managed) -> Managed:
    stack.callback(managed.close)
    return managed.start()


def hooks(stack: contextlib.ExitStack, server: HookServer, listen: bool = True) -> HookServer:
    stack.callback(server.stop)
    return server.start() if listen else server


def subscribe(client: Client, name: str, body: dict[str, Any]) -> int:
    response = client.put(
        f"/pubsubpull/subscriptions/{name}/", json.dumps(body), "application/json"
    )
    assert response.status_code == 201, response.content
    return Subscription.objects.get(name=name).pk


def alive(process: Managed) -> Callable[[], None]:
    def check() -> None:
        assert process.running, f"{process.name} exited {process.exits}:\n{process.log()[-3000:]}"

    return check


def no_job_left_behind(url: str) -> None:
    statuses = job_statuses(url)
    left = jobs(url, "status IN ('doing', 'failed')")
    assert not left, f"jobs left doing or failed: {left} (all: {statuses})"


# -- 1. worker killed during a long delivery -------------------------------------------


@TRANSACTIONAL
def test_worker_killed_three_times_during_a_long_delivery(
    api: Client, url: str, stack: contextlib.ExitStack, tmp_path: Path
) -> None:
    receiver = hooks(stack, HookServer(delay=BULK_RECEIVER_DELAY))
    body = {"target": receiver.url, "topics": CUSTOMERS, "batch_size": BULK_BATCH}
    subscription = subscribe(api, "bulk", body)
    part = BULK_CHANGES // 4
    for start in range(0, BULK_CHANGES, part):
        Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(start, start + part))
    expected = committed(url)
    assert len(expected) == BULK_CHANGES
    lock = tasks.subscription_lock(subscription)
    worker = started(stack, Managed("worker", worker_command(), url, tmp_path))
    wake()

    in_flight: set[str] = set()
    for n, after in enumerate(KILLS_AT):

        def arrived(count: int = after) -> bool:
            return len(receiver.received()) >= count

        wait_until(arrived, WITHIN, f"{after} batches", check=alive(worker))
        receiver.hold()
        assert receiver.held.wait(WITHIN), "no batch came to hold"
        doing = jobs(url, "status = 'doing' AND queueing_lock = %s", lock)
        worker.kill()
        receiver.release()
        assert receiver.held_hit is not None
        in_flight.add(receiver.held_hit.webhook_id)
        assert len(doing) == 1, doing  # the delivery job that sent the held batch
        killed = doing[0][0]
        if n == FORCED_KILL:  # another delivery job of the subscription waits
            tasks.defer_delivery(subscription)
            assert jobs(url, "status = 'todo' AND queueing_lock = %s", lock)
        assert async_to_sync(tasks.recover_stalled)(0) >= 1  # what the periodic job does
        [(_, _, status, _)] = jobs(url, "id = %s", killed)
        # forced: the waiting job continues the batch, the dead one is aborted
        assert status == "aborted" if n == FORCED_KILL else status in ("todo", "aborted")
        assert not jobs(url, "status = 'doing'")
        recovered = time.monotonic()
        worker.start()
        wake()

        def resent(held: str = receiver.held_hit.webhook_id) -> bool:
            return sum(h.webhook_id == held for h in receiver.received()) >= 2

        wait_until(resent, WITHIN, "the batch in flight to be resent", check=alive(worker))

    remaining = WITHIN - (time.monotonic() - recovered)
    wait_until(
        lambda: receiver.count() >= BULK_CHANGES,
        remaining,
        "the subscription to drain after the last recovery",
        check=alive(worker),
    )
    assert worker.stop() == 0
    repeated = assert_delivered(receiver.received(), expected, "bulk", resends=in_flight)
    assert repeated == in_flight  # each batch in flight came again, with its webhook-id
    no_job_left_behind(url)


# -- 2. worker killed during a dispatch --------------------------------------------------


@TRANSACTIONAL
def test_worker_killed_during_dispatch_of_200_subscriptions(
    api: Client, url: str, stack: contextlib.ExitStack, tmp_path: Path, settings: Any
) -> None:
    # one owner with more subscriptions than MAX_SUBSCRIPTIONS allows by default
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "MAX_SUBSCRIPTIONS": DISPATCH_SUBSCRIPTIONS}
    receiver = hooks(stack, HookServer())
    names = [f"s{i:03}" for i in range(DISPATCH_SUBSCRIPTIONS)]
    for name in names:
        subscribe(api, name, {"target": receiver.url, "topics": CUSTOMERS})
    with connection.cursor() as cursor:  # only the dispatch may queue deliveries
        cursor.execute("DELETE FROM procrastinate_jobs WHERE queue_name = 'pubsubpull'")
    for i in range(DISPATCH_WRITES):
        Customer.objects.create(name=f"before{i}")
    worker = Managed("worker", worker_command("--concurrency", "1"), url, tmp_path)
    stack.callback(worker.close)

    # The dispatch delivers to all 200 in one round; the first PUT to arrive is held, so
    # the round waits for it (the others answered and recorded): killed mid-round.
    receiver.hold()
    worker.start()
    wake()
    wait_until(receiver.held.is_set, WITHIN, "a delivery of the round", check=alive(worker))
    wait_until(
        lambda: len(receiver.received()) >= DISPATCH_SUBSCRIPTIONS,
        WITHIN,
        "every batch of the round to be sent",
        check=alive(worker),
    )
    held = receiver.held_hit
    assert held is not None
    # the answered batches recorded (in waves): only the held one is still in flight
    wait_until(
        lambda: (
            not Subscription.objects.exclude(name=held.subscription).exclude(batch_id="").exists()
        ),
        WITHIN,
        "the answered batches to be recorded",
        check=alive(worker),
    )
    assert jobs(url, "status = 'doing' AND task_name = 'pubsubpull.dispatch'")
    worker.kill()
    receiver.release()
    in_flight = Subscription.objects.get(name=held.subscription)
    assert in_flight.batch_id == held.webhook_id  # sent, never recorded: still in flight

    worker.argv = worker_command("--concurrency", "4")
    worker.start()
    wake()
    wait_until(
        lambda: all(receiver.count(n) >= DISPATCH_WRITES for n in names),
        WITHIN,
        "every subscription to deliver after the restart",
        check=alive(worker),
    )
    for i in range(DISPATCH_WRITES):
        Customer.objects.create(name=f"after{i}")
    wait_until(
        lambda: all(receiver.count(n) >= 2 * DISPATCH_WRITES for n in names),
        WITHIN,
        "every subscription to deliver new changes",
        check=alive(worker),
    )
    assert worker.stop() == 0

    expected = committed(url)
    assert len(expected) == 2 * DISPATCH_WRITES
    for name in names:
        assert_delivered(receiver.received(name), expected, name, resends={held.webhook_id})
    async_to_sync(tasks.recover_stalled)(0)  # the killed dispatch (the periodic job's work)
    no_job_left_behind(url)


# -- 3. connections terminated ----------------------------------------------------------


class Supervisor:
    """Restarts a worker that exited, as a process supervisor would; remembers how it
    ended, with times relative to the events the test notes (``mark``)."""

    def __init__(self, worker: Managed, wake: Callable[[], None]) -> None:
        self.worker, self.wake = worker, wake
        self.exits: list[tuple[float, int]] = []  # (monotonic time noticed, status)
        self.marks: dict[str, float] = {"start": time.monotonic()}

    def mark(self, event: str) -> None:
        self.marks[event] = time.monotonic()

    def watch(self, seconds: float) -> None:
        """Look at the worker for ``seconds`` (restarting it if it exited)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self()
            time.sleep(0.1)

    def __call__(self) -> None:
        if self.worker.running:
            return
        self.exits.append((time.monotonic(), self.worker.exits[-1]))
        self.worker.start()
        self.wake()

    def describe(self) -> str:
        if not self.exits:
            return "the worker kept running"
        return "the worker exited with " + ", ".join(
            f"status {code} ("
            + ", ".join(f"{at - t:+.1f} s from {event}" for event, t in self.marks.items())
            + ")"
            for at, code in self.exits
        )


@TRANSACTIONAL
def test_terminated_connections_of_worker_and_web_server(
    owner: User, api: Client, url: str, stack: contextlib.ExitStack, tmp_path: Path
) -> None:
    receiver = hooks(stack, HookServer(delay=0.005))
    subscribe(api, "t", {"target": receiver.url, "topics": CUSTOMERS, "batch_size": 20})
    token = create_token(owner)[1]
    server, base = runserver(url, tmp_path)
    stack.callback(server.close)
    worker = started(stack, Managed("worker", worker_command(), url, tmp_path))
    wake()
    supervise = Supervisor(worker, wake)
    writer = Writer(url, "w", rows=3)
    puller = Puller(base, token, wait=2, deadline=time.monotonic() + 4 * WITHIN)
    web_writes: list[int] = []
    stop_web = threading.Event()

    def write_through_the_web() -> None:  # the web process writes too (its own txids)
        with requests.Session() as session:
            for n in range(10_000):
                if stop_web.wait(0.05):
                    return
                with contextlib.suppress(requests.RequestException):
                    response = session.post(
                        base + "/shop/customers/", json={"name": f"web{n}"}, timeout=30
                    )
                    web_writes.append(response.status_code)

    idle: list[requests.Response] = []

    def wait_for_nothing() -> None:  # a long poll on a quiet topic, its connection open
        idle.append(
            requests.get(
                base + "/pubsubpull/changes/",
                params={"after": "now", "topics": "shop.product.*", "wait": "20"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=WITHIN,
            )
        )

    web_writer = threading.Thread(target=write_through_the_web, daemon=True)
    idle_poll = threading.Thread(target=wait_for_nothing, daemon=True)
    for thread in (writer, puller, web_writer, idle_poll):
        thread.start()
    terminated = {worker.application_name: 0, server.application_name: 0}
    try:
        for _ in range(TERMINATIONS):
            supervise.watch(TERMINATE_EVERY)
            receiver.hold()  # mid-work: the worker waits for the answer to a batch
            wait_until(receiver.held.is_set, WITHIN, "a batch in flight", check=supervise)
            for name in terminated:
                terminated[name] += terminate_backends(url, name)
            receiver.release()
            supervise.mark("last termination")
        supervise.watch(TERMINATE_EVERY)
    finally:
        receiver.release()
        stop_web.set()
        writer.stop()
        web_writer.join(timeout=WITHIN)
        idle_poll.join(timeout=WITHIN)
    expected = committed(url)
    puller.target = len(expected)
    wait_until(
        lambda: receiver.count("t") >= len(expected) and puller.done(),
        WITHIN,
        "every committed change to arrive and be pulled",
        check=supervise,
    )
    puller.finish()
    exits = list(supervise.exits)
    worker.stop()

    assert all(terminated.values()), f"nothing to terminate: {terminated}"
    assert_delivered(receiver.received("t"), expected, "subscription t")
    assert_complete_in_order(puller.ids, expected, "pulled")
    assert set(puller.statuses) <= {200, 503}, puller.statuses  # never a 500
    assert puller.without_retry_after == 0
    [response] = idle  # its connection was terminated while it waited
    assert response.status_code in (200, 503), (response.status_code, response.text[:500])
    assert response.status_code == 200 or response.headers.get("Retry-After")
    check = requests.get(
        base + "/pubsubpull/", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert check.status_code == 200  # the web process serves on without help
    assert_recovered_alone(url, exits, supervise, worker)


def assert_recovered_alone(
    url: str, exits: list[tuple[float, int]], supervise: Supervisor, worker: Managed
) -> None:
    """No job ended in error, and the worker kept running or exited non-zero (so that a
    supervisor restarting it on failure brings it back)."""
    problems = []
    failed = jobs(url, "status = 'failed'")
    if failed:
        problems.append(f"jobs ended in error: {failed}")
    if any(code == 0 for _, code in exits):
        problems.append(
            f"{supervise.describe()}: a supervisor that restarts on failure would not "
            "restart it after status 0"
        )
    print(supervise.describe())
    assert not problems, "\n".join(problems) + "\n--- worker log ---\n" + worker.log()[-6000:]


# -- 4. the database stopped and started again ------------------------------------------


def test_database_stopped_and_started_again(stack: contextlib.ExitStack, tmp_path: Path) -> None:
    database = EmbeddedPostgres()
    stack.callback(database.close)
    url = database.create_database("faults")
    run_manage(url, "migrate", "--verbosity", "0")
    run_manage(
        url,
        "createsuperuser",
        "--noinput",
        "--username",
        "ops",
        "--email",
        "ops@example.com",
        DJANGO_SUPERUSER_PASSWORD="ops-password",
    )
    token = run_manage(url, "pubsubpull", "token", "ops").strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {token}"}
    receiver = hooks(stack, HookServer(delay=0.005))
    server, base = runserver(url, tmp_path)
    stack.callback(server.close)
    worker = started(stack, Managed("worker", worker_command(), url, tmp_path))

    def wake_own() -> None:  # a dispatch, as a waiting worker's watcher queues one
        run_manage(
            url, "procrastinate", "defer", "--ignore-already-enqueued", "pubsubpull.dispatch", "{}"
        )

    supervise = Supervisor(worker, wake_own)
    response = requests.put(
        base + "/pubsubpull/subscriptions/ops/",
        headers=auth,
        timeout=30,
        json={"target": receiver.url, "topics": CUSTOMERS, "batch_size": 20},
    )
    assert response.status_code == 201, response.text  # queues a delivery: the first job
    writer = Writer(url, "w")
    puller = Puller(base, token, wait=2, deadline=time.monotonic() + 4 * WITHIN)
    writer.start()
    puller.start()
    try:
        wait_until(lambda: receiver.count() > 0, WITHIN, "a first delivery", check=alive(worker))
        time.sleep(WRITE_AROUND)
        receiver.hold()  # mid-work: the worker waits for the answer to a batch
        wait_until(receiver.held.is_set, WITHIN, "a batch in flight", check=alive(worker))
        database.stop()
        receiver.release()
        supervise.mark("database stopped")
        away = [
            requests.get(base + "/pubsubpull/changes/", params=params, headers=auth, timeout=30)
            for params in ({}, {"wait": "1"}, {"after": "now"})
        ]
        supervise.watch(DOWN_FOR)
        database.start()
        supervise.mark("database started")
        supervise.watch(WRITE_AROUND)
    finally:
        receiver.release()
        writer.stop()
    expected = committed(url)
    puller.target = len(expected)
    wait_until(
        lambda: receiver.count() >= len(expected) and puller.done(),
        WITHIN,
        "every committed change to arrive and be pulled",
        check=supervise,
    )
    puller.finish()
    exits = list(supervise.exits)
    worker.stop()

    for response in away:
        assert response.status_code == 503, (response.status_code, response.text[:500])
        assert response.headers.get("Retry-After")
    assert set(puller.statuses) <= {200, 503}, puller.statuses  # never a 500
    assert puller.statuses[503] > 0 and puller.without_retry_after == 0
    assert_delivered(receiver.received(), expected, "subscription ops")
    assert_complete_in_order(puller.ids, expected, "pulled")
    assert_recovered_alone(url, exits, supervise, worker)


# -- 5. a subscriber down, then slow, then failing at random ---------------------------


@TRANSACTIONAL
def test_failing_subscriber_recovers_and_does_not_hold_back_another(
    api: Client, url: str, stack: contextlib.ExitStack, tmp_path: Path
) -> None:
    healthy = hooks(stack, HookServer())
    flaky = hooks(stack, HookServer(), listen=False)  # its port refuses connections
    subscribe(api, "healthy", {"target": healthy.url, "topics": CUSTOMERS, "batch_size": 10})
    body = {"target": flaky.url, "topics": CUSTOMERS, "batch_size": FLAKY_BATCH}
    flaky_id = subscribe(api, "flaky", body)
    command = worker_command("--concurrency", "2", overrides=FLAKY_SETTINGS)
    worker = started(stack, Managed("worker", command, url, tmp_path))
    wake()

    def write(phase: str) -> int:
        with psycopg.connect(url, autocommit=True) as writer:
            for n in range(FLAKY_WRITES):
                insert_customers(writer, (f"{phase}{n}-{k}" for k in range(FLAKY_ROWS)))
        return len(committed(url))

    def failed_attempts(error: str) -> int:
        return Delivery.objects.filter(subscription_id=flaky_id, error__contains=error).count()

    # down: connection refused
    total = write("down")
    wait_until(
        lambda: healthy.count() >= total,
        WITHIN,
        "healthy to receive while flaky is down",
        check=alive(worker),
    )
    wait_until(
        lambda: failed_attempts("ConnectionError") >= 2,
        WITHIN,
        "refused attempts",
        check=alive(worker),
    )
    # slow: answers after DELIVERY_TIMEOUT
    flaky.delay = SLOW_ANSWER
    flaky.start()
    total = write("slow")
    wait_until(
        lambda: healthy.count() >= total,
        WITHIN,
        "healthy to receive while flaky is slow",
        check=alive(worker),
    )
    wait_until(
        lambda: failed_attempts("Timeout") >= 2, WITHIN, "timed out attempts", check=alive(worker)
    )
    acknowledged = Delivery.objects.filter(subscription_id=flaky_id, status_code__lt=300)
    assert not acknowledged.exists()  # nothing acknowledged yet: no cursor moved past a change
    # back, but 30% of the answers are 500
    chance = random.Random(9)
    flaky.policy = lambda hit: 500 if chance.random() < FAIL_RATE else 204
    flaky.delay = 0.0
    total = write("flaky")
    wait_until(
        lambda: flaky.count() >= total and healthy.count() >= total,
        WITHIN,
        "everything to arrive once flaky answers",
        check=alive(worker),
    )
    assert worker.stop() == 0

    expected = committed(url)
    assert_delivered(healthy.received(), expected, "healthy", resends=set())  # never resent
    assert_delivered(flaky.received(), expected, "flaky")
    assert any(h.status == 500 for h in flaky.received())
    assert Subscription.objects.get(pk=flaky_id).status == Subscription.Status.ACTIVE
    no_job_left_behind(url)


# -- 6. many long polls ----------------------------------------------------------------


@TRANSACTIONAL
def test_200_long_polls_during_writes(
    owner: User, url: str, stack: contextlib.ExitStack, tmp_path: Path
) -> None:
    token = create_token(owner)[1]
    server, base = runserver(url, tmp_path)
    stack.callback(server.close)
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(base + "/pubsubpull/", headers=auth, timeout=30).status_code == 200
    baseline = settled_backends(url)
    sampler = BackendSampler(url)
    stack.callback(sampler.stop)

    deadline = time.monotonic() + 3 * WITHIN
    polls = [Puller(base, token, wait=LONG_POLL_WAIT, deadline=deadline) for _ in range(LONG_POLLS)]
    total = POLL_WRITES * POLL_ROWS
    sampler.start()
    for poll in polls:
        poll.target = total
        poll.start()
        # Arrivals spread over 2 s: each request opens a database connection to
        # authenticate, and 200 in the same millisecond would be 200 sessions whatever
        # long polls do. What is tested is that waiting holds none.
        time.sleep(0.01)
    try:
        wait_until(lambda: all(p.started_polling.is_set() for p in polls), WITHIN, "the polls")
        time.sleep(1.0)  # let them all wait
        with psycopg.connect(url, autocommit=True) as writer:
            for n in range(POLL_WRITES):
                started = time.monotonic()
                other = requests.get(base + "/pubsubpull/", headers=auth, timeout=WITHIN)
                assert other.status_code == 200  # still served beside the long polls
                sampler.other_requests.append(time.monotonic() - started)
                insert_customers(writer, (f"lp{n}-{k}" for k in range(POLL_ROWS)))
                time.sleep(POLL_PAUSE)
        wait_until(lambda: all(p.done() for p in polls), 2 * WITHIN, "every poll to see it all")
    finally:
        for poll in polls:
            poll.finish()
        sampler.stop()

    expected = committed(url)
    assert len(expected) == total
    for n, poll in enumerate(polls):
        assert_complete_in_order(poll.ids, expected, f"long poll {n}")
        assert set(poll.statuses) == {200}, poll.statuses  # never a 500 or a refused connection
        assert not poll.errors, poll.errors
    assert sum(p.turned_away for p in polls) > 0  # the cap answered some at once
    # Waiting polls hold no connection, and their database work (authenticate, look up
    # permissions, read) is rationed to CONCURRENT_READS at a time: the sessions stay
    # far below one per poll (before: two per poll, and PostgreSQL refused connections
    # at 60 polls; then one per request in flight, and it refused them at 200 polls).
    print(
        f"backends: baseline {baseline}, most {sampler.most}; other requests "
        f"{max(sampler.other_requests):.3f} s at most"
    )
    assert not sampler.refused, sampler.refused
    # Beside the rationed reads: the writer, the process's wake-up watcher, the "other"
    # request and the sampler's own session; a margin for sessions still closing.
    assert sampler.most - baseline <= reads.CONCURRENT_READS + 10
    wait_until(
        lambda: backends(url) <= baseline,
        WITHIN,
        f"backends to return to {baseline} (now {backends(url)})",
    )


class BackendSampler(threading.Thread):
    """Counts the database's sessions every 50 ms; keeps the most seen."""

    def __init__(self, url: str) -> None:
        super().__init__(name="backend-sampler", daemon=True)
        self.url, self.most = url, 0
        self.other_requests: list[float] = []
        self.refused: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            try:
                self.most = max(self.most, backends(self.url))
            except psycopg.OperationalError as error:  # e.g. too many clients already
                self.refused.append(str(error))

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=10)


def settled_backends(url: str) -> int:
    """The number of sessions once it stays the same for a second."""
    last = -1
    for _ in range(int(WITHIN)):
        now = backends(url)
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    raise AssertionError("the number of database sessions never settled")
