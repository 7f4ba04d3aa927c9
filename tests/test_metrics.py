"""Prometheus metrics: ``GET <pubsubpull>/metrics``, for staff."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer

from pubsubpull import metrics
from pubsubpull.models import Change, Subscription
from test_project.shop.models import Customer
from tests.delivery_helpers import Receiver, drain, put

URL = "/pubsubpull/metrics"


def samples(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The scraped samples: (name, sorted labels) -> value."""
    response = client.get(URL)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


@pytest.mark.django_db
def test_metrics_are_for_staff_only(admin_client: Client) -> None:
    assert Client().get(URL).status_code == 401
    clerk = Client()
    clerk.force_login(User.objects.create_user("clerk"))
    response = clerk.get(URL)
    assert response.status_code == 403 and response.json()["error"] == "permission_denied"
    assert admin_client.get(URL).status_code == 200


@pytest.mark.django_db
def test_without_prometheus_client_the_answer_names_the_extra(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "AVAILABLE", False)
    response = admin_client.get(URL)
    assert response.status_code == 404 and "pubsubpull[metrics]" in response.json()["detail"]


@pytest.mark.django_db
def test_pull_requests_are_counted_by_endpoint_and_status(admin_client: Client) -> None:
    key = ("pubsubpull_pull_requests_total", (("endpoint", "directory"), ("status", "200")))
    before = samples(admin_client).get(key, 0.0)
    admin_client.get("/pubsubpull/")
    admin_client.get("/pubsubpull/")
    admin_client.get("/pubsubpull/models/shop.nothing/")
    after = samples(admin_client)
    assert after[key] == before + 2
    missing = ("pubsubpull_pull_requests_total", (("endpoint", "instances"), ("status", "404")))
    assert after[missing] >= 1


@pytest.mark.django_db(transaction=True)  # the lag counts changes below the horizon
def test_gauges_show_lag_its_age_the_horizon_and_the_log_size(admin_client: Client) -> None:
    owner = User.objects.get(username="admin")
    Subscription.objects.create(
        owner=owner, name="behind", target="https://hooks.example.com/", cursor="0-0"
    )
    for i in range(3):
        Customer.objects.create(name=f"c{i}")
    scraped = samples(admin_client)
    label = (("subscription", "admin/behind"),)
    # every change so far (the admin's creation and login, the customers): none delivered
    assert scraped[("pubsubpull_subscription_lag_changes", label)] == Change.objects.count() >= 3
    assert scraped[("pubsubpull_subscription_lag_seconds", label)] > 0
    assert ("pubsubpull_horizon_age_seconds", ()) in scraped
    assert ("pubsubpull_change_log_rows", ()) in scraped
    ours = [labels for name, labels in scraped if name.startswith("pubsubpull_")]
    assert {key for labels in ours for key, _ in labels} <= {
        "subscription",
        "endpoint",
        "status",
        "outcome",
        "le",
    }  # bounded labels: never a pk or a topic


@pytest.mark.django_db(transaction=True)
def test_deliveries_are_counted_timed_and_logged(
    admin_client: Client, httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A real (one-shot, in-process) worker delivers to a loopback receiver that fails
    once: both attempts are counted, the changes once, and each attempt is logged."""
    receiver = Receiver(statuses=[500])
    httpserver.expect_request("/hook", method="PUT").respond_with_handler(receiver)
    schedule = {"RETRY_SCHEDULE": [0, 0, 0], "ALLOWED_TARGETS": [httpserver.url_for("/")]}
    with override_settings(PUBSUBPULL=schedule):
        put(admin_client, "counted", {"target": httpserver.url_for("/hook")}, status=201)
        label = (("subscription", "admin/counted"),)
        before = samples(admin_client)
        Customer.objects.create(name="counted")
        with caplog.at_level(logging.INFO, logger="pubsubpull.delivery"):
            drain(lambda: len(receiver.changes()) >= 1)
        after = samples(admin_client)

    def grew(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("pubsubpull_deliveries_total", (*label, ("outcome", "failed"))) == 1
    assert grew("pubsubpull_deliveries_total", (*label, ("outcome", "ok"))) == 1
    assert len(receiver.requests) == 2  # the same batch of one change, twice
    assert grew("pubsubpull_delivered_changes_total", label) == len(receiver.requests[-1].changes)
    assert grew("pubsubpull_delivery_duration_seconds_count", ()) == 2
    ours = [r for r in caplog.records if getattr(r, "subscription", None) == "admin/counted"]
    logged = [r for r in ours if hasattr(r, "batch_id")]  # the attempts
    assert [r.levelname for r in logged] == ["WARNING", "INFO"]
    assert [hasattr(r, "next_attempt") for r in ours].count(True) == 1  # the retry
    assert all(r.batch_id and r.duration >= 0 for r in logged)  # type: ignore[attr-defined]
    assert all("webhook-signature" not in r.getMessage() for r in logged)
