"""The retry schedule: RETRY_SCHEDULE, Retry-After, failing when used up, the old keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from django.test import Client, override_settings
from django.utils import timezone
from pytest_httpserver import HTTPServer

from pubsubpull import conf, delivery
from pubsubpull.models import Delivery, Subscription
from test_project.shop.models import Customer
from tests.delivery_helpers import Answer, Receiver, drain, put

SETTINGS = {
    "TRACK": {"auth.user": {"exclude": ["password"]}},
    "ALLOWED_TARGETS": ["http://localhost:", "http://127.0.0.1:"],
}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def hook(httpserver: HTTPServer, receiver: Receiver) -> str:
    httpserver.expect_request("/hook", method="PUT").respond_with_handler(receiver)
    return str(httpserver.url_for("/hook"))


def attempts(name: str) -> list[int | None]:
    return list(
        Delivery.objects.filter(subscription__name=name)
        .order_by("id")
        .values_list("status_code", flat=True)
    )


# -- the schedule, as plain functions ----------------------------------------------------


def test_default_schedule_is_the_standard_webhooks_example() -> None:
    schedule = conf.settings.RETRY_SCHEDULE
    assert list(schedule) == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    assert 26 * 3600 < sum(schedule) < 28 * 3600  # about 27 hours of retries
    assert conf.longest_retry_delay() == 36000


@override_settings(PUBSUBPULL={"RETRY_SCHEDULE": [0, 10, 100]})
def test_each_failure_waits_its_delay_with_jitter_then_the_schedule_is_used_up() -> None:
    for failures, delay in ((1, 0), (2, 10), (3, 100)):
        for _ in range(20):
            wait = delivery.retry_delay(failures)
            assert wait is not None
            assert delay * (1 - delivery.JITTER) <= wait.total_seconds()
            assert wait.total_seconds() <= delay * (1 + delivery.JITTER)
    assert delivery.retry_delay(4) is None  # used up: failing


@override_settings(PUBSUBPULL={"RETRY_SCHEDULE": [0, 10, 100]})
def test_retry_after_waits_at_least_that_long_capped_at_the_longest_delay() -> None:
    def wait(failures: int, retry_after: float) -> float:
        delay = delivery.retry_delay(failures, retry_after)
        assert delay is not None
        return delay.total_seconds()

    assert wait(1, 50) == 50  # longer than the schedule's 0: waits what was asked
    assert 90 <= wait(3, 5) <= 110  # shorter than the schedule's 100: the schedule
    assert wait(1, 86400) == 100  # capped at the longest delay
    assert wait(1, float("inf")) == 100
    assert delivery.retry_delay(4, 50) is None  # Retry-After does not extend the schedule


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("9" * 40, float("inf")),  # more digits than any schedule: capped later
        (format_datetime(NOW + timedelta(minutes=2), usegmt=True), 120.0),
        ("Tue, 01 Dec 2026 12:03:00 GMT", 180.0),  # IMF-fixdate
        ("Tuesday, 01-Dec-26 12:03:00 GMT", 180.0),  # obsolete RFC 850 form
        ("Tue Dec  1 12:03:00 2026", 180.0),  # obsolete asctime form
        ("Tue, 01 Dec 2026 11:00:00 GMT", 0.0),  # in the past: no wait
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str, seconds: float) -> None:
    assert delivery.retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "soon",
        "-5",
        "1.5",
        "1e3",
        "0x10",
        "²",
        "١٢",
        "Wed, 99 Foo 2026 25:61:00 GMT",
        "12 seconds",
        "\x00",
        "Tue, 01 Dec 10000 12:03:00 GMT",
    ],
)
def test_garbage_retry_after_is_ignored(value: str | None) -> None:
    assert delivery.retry_after(value, NOW) is None


# -- through a real worker and a loopback receiver ---------------------------------------

real_worker = pytest.mark.django_db(transaction=True)


@real_worker
@override_settings(PUBSUBPULL={**SETTINGS, "RETRY_SCHEDULE": [0, 0.2, 0.2]})
def test_failing_only_when_the_schedule_is_used_up(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver(statuses=[500] * 10)
    put(api, "down", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="waiting")
    drain(lambda: Subscription.objects.get(name="down").status == "failing")
    assert attempts("down") == [500, 500, 500, 500]  # the first attempt and 3 retries
    down = Subscription.objects.get(name="down")
    assert down.failures == 4 and down.next_attempt is None
    assert "RETRY_SCHEDULE" in down.last_error and down.last_error.startswith("HTTP 500")
    Customer.objects.create(name="more")
    drain(lambda: True)
    assert len(receiver.requests) == 4  # no attempts until resumed


@real_worker
@override_settings(PUBSUBPULL={**SETTINGS, "RETRY_SCHEDULE": [0, 0.2, 0.2]})
def test_a_success_before_the_end_of_the_schedule_starts_it_again(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver(statuses=[500, 500, 500, 204, 500, 500, 500])
    put(api, "flaky", {"target": hook(httpserver, receiver), "batch_size": 1}, status=201)
    Customer.objects.create(name="one")
    Customer.objects.create(name="two")
    drain(lambda: len(receiver.requests) >= 8)
    assert attempts("flaky") == [500, 500, 500, 204, 500, 500, 500, 204]
    assert Subscription.objects.get(name="flaky").status == "active"


def retry_answer(status: int, retry_after: str) -> list[Answer]:
    return [(status, {"Retry-After": retry_after})]


@real_worker
@override_settings(PUBSUBPULL={**SETTINGS, "RETRY_SCHEDULE": [0, 0, 600]})
def test_503_with_retry_after_seconds_waits_that_long(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver(statuses=retry_answer(503, "120"))
    put(api, "busy", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    before = timezone.now()
    drain(lambda: bool(attempts("busy")))
    busy = Subscription.objects.get(name="busy")
    assert attempts("busy") == [503] and busy.status == "active" and busy.failures == 1
    assert busy.next_attempt is not None
    # the schedule said 0 s; the target asked 120 s
    assert before + timedelta(seconds=120) <= busy.next_attempt
    assert busy.next_attempt <= timezone.now() + timedelta(seconds=120)


@real_worker
@override_settings(PUBSUBPULL={**SETTINGS, "RETRY_SCHEDULE": [0, 0, 600]})
def test_503_with_retry_after_http_date_waits_until_then(
    api: Client, httpserver: HTTPServer
) -> None:
    until = (timezone.now() + timedelta(minutes=3)).replace(microsecond=0)
    receiver = Receiver(statuses=retry_answer(503, format_datetime(until, usegmt=True)))
    put(api, "busy", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: bool(attempts("busy")))
    busy = Subscription.objects.get(name="busy")
    assert busy.next_attempt is not None and until <= busy.next_attempt
    assert busy.next_attempt < until + timedelta(seconds=5)


@real_worker
@override_settings(PUBSUBPULL={**SETTINGS, "RETRY_SCHEDULE": [0, 0, 30]})
def test_429_retry_after_is_capped_at_the_longest_delay(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver(statuses=retry_answer(429, str(7 * 24 * 3600)))
    put(api, "limited", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    before = timezone.now()
    drain(lambda: bool(attempts("limited")))
    limited = Subscription.objects.get(name="limited")
    assert attempts("limited") == [429] and limited.next_attempt is not None
    # a week asked, 30 s (the longest delay of the schedule) waited
    assert before + timedelta(seconds=30) <= limited.next_attempt
    assert limited.next_attempt <= timezone.now() + timedelta(seconds=30)


@real_worker
@override_settings(PUBSUBPULL={**SETTINGS, "RETRY_SCHEDULE": [0, 0, 0, 0, 0, 0]})
def test_garbage_retry_after_headers_are_ignored_by_a_real_worker(
    api: Client, httpserver: HTTPServer
) -> None:
    garbage = ["soon", "-5", "1.5", "Wed, 99 Foo 2026 25:61:00 GMT", "9" * 5000]
    receiver = Receiver(statuses=[(503, {"Retry-After": value}) for value in garbage])
    put(api, "odd", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: len(receiver.requests) == 6, timeout=30)
    # each retried at once, as the schedule says; no crash; the last one delivered
    assert attempts("odd")[:5] == [503] * 5
    drain(lambda: attempts("odd")[-1:] == [204])  # capped at 0 s: the huge one too
    assert Subscription.objects.get(name="odd").failures == 0


@real_worker
@override_settings(PUBSUBPULL={**SETTINGS, "RETRY_SCHEDULE": [0, 0, 0]})
def test_410_gone_disables_at_once_whatever_the_schedule(
    api: Client, httpserver: HTTPServer
) -> None:
    receiver = Receiver(statuses=[500, 410])
    put(api, "gone", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: Subscription.objects.get(name="gone").status == "disabled")
    assert attempts("gone") == [500, 410]  # a retry left in the schedule, not used


# -- the deprecated keys -----------------------------------------------------------------


def test_old_keys_make_a_doubling_schedule() -> None:
    with override_settings(PUBSUBPULL={"MAX_FAILURES": 5, "RETRY_BASE": 2.0, "RETRY_CAP": 10}):
        assert list(conf.settings.RETRY_SCHEDULE) == [2.0, 4.0, 8.0, 10.0]
        assert conf.longest_retry_delay() == 10.0
    with override_settings(PUBSUBPULL={"RETRY_BASE": 0.5}):  # the others' defaults
        assert list(conf.settings.RETRY_SCHEDULE) == [0.5 * 2**i for i in range(9)]
    with override_settings(PUBSUBPULL={"MAX_FAILURES": 10**9, "RETRY_CAP": 1.0}):
        schedule = conf.settings.RETRY_SCHEDULE  # computed on use, not a billion floats
        assert len(schedule) == 10**9 - 1 and schedule[-1] == 1.0
        assert conf.longest_retry_delay() == 1.0 and delivery.retry_delay(10**8) is not None
    with override_settings(PUBSUBPULL={"MAX_FAILURES": 3, "RETRY_SCHEDULE": [1]}):
        assert list(conf.settings.RETRY_SCHEDULE) == [1]  # the new key wins


@real_worker
@override_settings(
    PUBSUBPULL={**SETTINGS, "MAX_FAILURES": 3, "RETRY_BASE": 0.01, "RETRY_CAP": 0.02}
)
def test_old_keys_keep_working(api: Client, httpserver: HTTPServer) -> None:
    receiver = Receiver(statuses=[500] * 5)
    put(api, "old", {"target": hook(httpserver, receiver)}, status=201)
    Customer.objects.create(name="x")
    drain(lambda: Subscription.objects.get(name="old").status == "failing")
    assert attempts("old") == [500, 500, 500]  # MAX_FAILURES attempts, as before
