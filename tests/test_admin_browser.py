"""The admin in a real browser: Debian's Chromium (``/usr/bin/chromium``) driven by Playwright,
against pytest-django's live server.

Skipped, with the reason, where Playwright or Chromium is missing (``.ci/run`` installs
Chromium with apt when it runs as root). With ``PUBSUBPULL_SCREENSHOTS=1`` the tests also write
the README's screenshots to ``docs/screenshots/``; otherwise they write nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from pubsubpull.models import Change, Delivery, Request, Subscription
from test_project.shop.models import Customer, Order

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def _missing() -> str:
    """Why the browser tests cannot run here, or ``""``."""
    if find_spec("playwright") is None:
        return "playwright is not installed: pip install -e '.[test]'"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: apt-get install -y chromium (as root; .ci/run does)"
    return ""


pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),  # the live server reads what the test wrote
    pytest.mark.skipif(bool(_missing()), reason=_missing()),
]

PASSWORD = "browser-password"


@pytest.fixture
def root() -> User:
    return User.objects.create_superuser("root", password=PASSWORD)


@pytest.fixture
def page(live_server: Any, root: User, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    """A Chromium page logged in to the live server's admin as ``root``."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio event loop running in this thread while it is
    # started, so Django's ORM refuses to run here ("SynchronousOnlyOperation: You cannot
    # call this from an async context"). The loop is idle whenever the test's own code runs:
    # a query here never overlaps a coroutine, which is what the check guards against.
    # Allowed for this test only (monkeypatch undoes it after the browser has stopped).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            # Meanwhile the thread counts as async, so Django keeps its connections per
            # context rather than per thread: the test's queries open connections of their
            # own, closed below, or they would outlive the test database.
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(15_000)
            page.goto(f"{live_server.url}/admin/")
            page.fill("#id_username", "root")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_selector("#user-tools")
            yield page
        finally:
            browser.close()
            connections.close_all()


def screenshot(page: Page, name: str) -> None:
    """Save ``docs/screenshots/<name>.png`` when ``PUBSUBPULL_SCREENSHOTS=1``."""
    if os.environ.get("PUBSUBPULL_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def shop(root: User) -> Request:
    """A request that created a customer and two orders, then an update outside requests."""
    client = Client()
    client.force_login(root)
    response = client.post("/shop/customers/", {"name": "Ada Lovelace"}, "application/json")
    assert response.status_code in (200, 201)
    ada = Customer.objects.get(name="Ada Lovelace")
    Order.objects.bulk_create([Order(customer=ada, total=12), Order(customer=ada, total=30)])
    Customer.objects.filter(pk=ada.pk).update(name="Ada King", email="ada@example.com")
    return Request.objects.get(path="/shop/customers/")  # the login is a request too


def rows(page: Page) -> list[str]:
    """The change list's rows, as text."""
    return page.locator("#result_list tbody tr").all_inner_texts()


def test_log_in_and_filter_the_change_log_by_model(page: Page, shop: Request) -> None:
    page.click("text=Changes")
    page.wait_for_selector("#result_list")
    assert len(rows(page)) == Change.objects.count()
    assert "shop.customer.update" in rows(page)[0]  # newest first
    page.locator("#changelist-filter").get_by_role("link", name="shop.order").click()
    page.wait_for_url(re.compile(r"model=shop\.order"))
    listed = rows(page)
    assert len(listed) == 2 and all("shop.order.insert" in row for row in listed)
    screenshot(page, "change-list")


def test_open_a_change_and_see_the_diff(page: Page, shop: Request) -> None:
    update = Change.objects.get(model="shop.customer", op="update")
    page.click("text=Changes")
    page.get_by_role("link", name=str(update.pk), exact=True).click()
    diff = page.locator("table.pubsubpull-diff")
    diff.wait_for()
    changed = diff.locator("tr.pubsubpull-changed th").all_inner_texts()
    assert [name.replace(" (changed)", "") for name in changed] == ["name", "email"]
    name_row = diff.locator("tr", has=page.locator("th", has_text="name")).inner_text()
    assert '"Ada Lovelace"' in name_row and '"Ada King"' in name_row
    highlighted = diff.locator("tr.pubsubpull-changed td").first
    assert highlighted.evaluate("cell => getComputedStyle(cell).backgroundColor") not in (
        "rgba(0, 0, 0, 0)",
        "transparent",
    )  # the admin's CSS is served and applied
    screenshot(page, "change-diff")


def test_open_a_request_and_its_changes(page: Page, shop: Request) -> None:
    page.click("text=Requests")
    page.locator("#result_list tr", has_text="/shop/customers/").locator("th a").click()
    page.wait_for_url(re.compile(f"/request/{shop.pk}/change/"))
    screenshot(page, "request")
    page.get_by_role("link", name="1 change").click()
    page.wait_for_url(re.compile(f"request={shop.pk}"))
    assert [row.split("\t")[1] for row in rows(page)] == ["shop.customer.insert"]
    assert page.locator("#changelist-filter").get_by_text("By request").is_visible()


def test_pause_and_resume_a_subscription(page: Page, root: User, shop: Request) -> None:
    subscription = Subscription.objects.create(
        owner=root, name="orders", target="http://127.0.0.1:8001/hook", topics=["shop.order.*"]
    )

    def act(action: str) -> None:
        page.click("text=Subscriptions")
        page.check(f"input[name=_selected_action][value='{subscription.pk}']")
        page.select_option("select[name=action]", action)
        page.click("button[name=index]")
        page.wait_for_selector("ul.messagelist")
        assert page.inner_text("ul.messagelist") == f"{action.capitalize()}d 1 subscription."

    act("pause")
    subscription.refresh_from_db()
    assert subscription.status == "paused"
    assert "\tPaused\t" in rows(page)[0]
    act("resume")
    subscription.refresh_from_db()
    assert subscription.status == "active"

    # ping: the target (nothing listens there, and it is not an allowed target) fails
    page.click("text=Subscriptions")
    page.check(f"input[name=_selected_action][value='{subscription.pk}']")
    page.select_option("select[name=action]", "ping")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist li.error")
    said = page.inner_text("ul.messagelist")
    assert said.startswith(f"Ping {root.username}/orders: no answer in "), said

    for n, status in enumerate([200, 503, 200]):
        Delivery.objects.create(
            subscription=subscription,
            batch_id=f"batch-{n}",
            first=f"1-{n * 10 + 1}",
            last=f"1-{n * 10 + 10}",
            count=10,
            status_code=status,
            error="" if status == 200 else "HTTP 503",
            duration=timedelta(milliseconds=40),
        )
    page.get_by_role("link", name="orders").click()
    attempts = page.locator("table.pubsubpull-attempts tbody tr")
    attempts.first.wait_for()
    assert [row.split("\t")[4] for row in attempts.all_inner_texts()] == ["200", "503", "200"]
    assert attempts.nth(1).get_attribute("class") == "pubsubpull-failed"
    screenshot(page, "subscription")
