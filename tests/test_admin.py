"""Admin: the change log and requests are browsable and read-only; subscription edits
follow the API's rules, also for staff who are not superusers."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.admin import site
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext

import pubsubpull
from pubsubpull import diffs, local_subscribers, subscriptions
from pubsubpull.admin import COUNT_CAP, RECENT_ATTEMPTS, CappedPaginator
from pubsubpull.crypto import encrypt
from pubsubpull.models import Change, Delivery, Request, Subscription
from pubsubpull.webhooks import generate_secret
from test_project.shop.models import Customer, Order

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    admin = User.objects.create_superuser("root", password="root-password")
    client.force_login(admin)
    client.post("/shop/customers/", {"name": "Admin Seen"}, "application/json")
    return client


def test_change_changelist_has_filters_and_no_add(staff: Client) -> None:
    response = staff.get("/admin/pubsubpull/change/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "shop.customer.insert" in content
    for title in ("By model", "By op", "By created"):
        assert title in content
    assert "By topic" not in content  # a DISTINCT over the whole log
    assert "By request" not in content  # shown only while one is chosen
    assert "/admin/pubsubpull/change/add/" not in content
    assert staff.get("/admin/pubsubpull/change/add/").status_code == 403
    assert staff.get("/admin/pubsubpull/change/?op=insert").context["cl"].result_count
    filtered = staff.get("/admin/pubsubpull/change/?op=delete")
    assert filtered.context["cl"].result_count == 0


def choices(response: Response, title: str) -> list[str]:
    """The choices of the change list's filter ``title``, "All" left out."""
    for spec in response.context["cl"].filter_specs:
        if spec.title == title:
            return [c["display"] for c in spec.choices(response.context["cl"])][1:]
    raise AssertionError(f"no filter {title!r}")


def test_change_list_is_newest_first_and_filters_come_from_the_registry(staff: Client) -> None:
    Customer.objects.create(name="Second")
    Order.objects.create(customer=Customer.objects.get(name="Second"))
    with CaptureQueriesContext(connection) as queries:
        response = staff.get("/admin/pubsubpull/change/")
        assert "Show counts" not in response.content.decode()
        staff.get("/admin/pubsubpull/change/?_facets=1")  # asked for anyway: none
    listed = [change.pk for change in response.context["cl"].result_list]
    assert listed == sorted(listed, reverse=True)
    assert [c.model for c in response.context["cl"].result_list][:2] == [
        "shop.order",
        "shop.customer",
    ]
    # tracked models (code and settings) and event labels, whether or not they changed yet
    assert choices(response, "model") == [
        "auth.user",
        "billing.invoice",
        "shop.customer",
        "shop.order",
        "shop.product",
    ]
    assert choices(response, "op") == ["insert", "update", "delete", "truncate"]
    log = [query["sql"].upper() for query in queries.captured_queries]
    assert not [sql for sql in log if "DISTINCT" in sql]
    counts = [sql for sql in log if "COUNT(" in sql]
    assert counts and all(f"LIMIT {COUNT_CAP + 1}" in sql for sql in counts), counts

    by_model = staff.get("/admin/pubsubpull/change/?model=shop.customer").context["cl"]
    assert {change.model for change in by_model.result_list} == {"shop.customer"}
    assert by_model.result_count == 2


def test_change_list_counts_up_to_the_cap_and_says_so(
    staff: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CappedPaginator, "cap", 2)
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(4))
    response = staff.get("/admin/pubsubpull/change/?op=insert")
    assert response.context["cl"].result_count == 2  # of 5
    assert response.context["cl"].paginator.num_pages == 1
    assert "Only the newest 2 changes are paged" in response.content.decode()
    few = staff.get("/admin/pubsubpull/change/?model=auth.user")  # root, created by the fixture
    assert "are paged" not in few.content.decode()


def test_change_page_is_read_only(staff: Client) -> None:
    change = Change.objects.get(model="shop.customer")
    response = staff.get(f"/admin/pubsubpull/change/{change.pk}/change/")
    assert response.status_code == 200
    assert 'name="topic"' not in response.content.decode()  # no input fields
    deleted = staff.post(f"/admin/pubsubpull/change/{change.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    assert Change.objects.filter(pk=change.pk).exists()


def diff_rows(response: Response) -> dict[str, tuple[str, str, bool]]:
    """The change page's diff table: field -> (old, new, highlighted), as HTML."""
    content = response.content.decode()
    table = content[content.index('<table class="pubsubpull-diff">') :]
    table = table[: table.index("</table>")]
    rows = {}
    for match in re.finditer(
        r'<tr class="([^"]*)"><th scope="row">([^<]*)</th><td><pre>(.*?)</pre></td>'
        r"<td><pre>(.*?)</pre></td></tr>",
        table,
        re.S,
    ):
        rows[match[2]] = (match[3], match[4], match[1] == "pubsubpull-changed")
    return rows


def test_change_page_shows_a_diff_with_the_changed_fields_highlighted(staff: Client) -> None:
    customer = Customer.objects.get(name="Admin Seen")
    Customer.objects.filter(pk=customer.pk).update(name="Renamed", active=False)
    change = Change.objects.get(model="shop.customer", op="update")
    rows = diff_rows(staff.get(f"/admin/pubsubpull/change/{change.pk}/change/"))
    assert list(rows) == ["id", "name", "email", "active"]  # the model's order; no password
    assert rows["name"] == ("&quot;Admin Seen&quot;", "&quot;Renamed&quot;", True)
    assert rows["active"] == ("true", "false", True)
    assert rows["email"] == ("&quot;&quot;", "&quot;&quot;", False)
    assert rows["id"] == (str(customer.pk), str(customer.pk), False)

    insert = Change.objects.get(model="shop.customer", op="insert")
    rows = diff_rows(staff.get(f"/admin/pubsubpull/change/{insert.pk}/change/"))
    assert rows["name"] == ("", "&quot;Admin Seen&quot;", False)  # nothing to compare with


def test_change_page_shows_user_data_escaped(staff: Client) -> None:
    attack = "<script>alert('pwned')</script>"
    customer = Customer.objects.create(name=attack)
    change = Change.objects.filter(object_pk=str(customer.pk)).get()
    content = staff.get(f"/admin/pubsubpull/change/{change.pk}/change/").content.decode()
    assert "<script>alert" not in content
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in content


def test_change_page_pretty_prints_json(staff: Client) -> None:
    with pubsubpull.context(job="import <b>"):
        event = pubsubpull.publish(
            "billing.invoice.paid", {"lines": [{"sku": "A", "qty": 2}], "total": "9.50"}
        )
    response = staff.get(f"/admin/pubsubpull/change/{event.pk}/change/")
    rows = diff_rows(response)
    assert rows["lines"] == (
        "",
        "[\n  {\n    &quot;qty&quot;: 2,\n    &quot;sku&quot;: &quot;A&quot;\n  }\n]",
        False,
    )
    assert "<pre>{\n  &quot;job&quot;: &quot;import &lt;b&gt;&quot;\n}</pre>" in (
        response.content.decode()
    )


def test_request_page_links_its_changes(staff: Client) -> None:
    request = Request.objects.get()
    Customer.objects.create(name="Outside any request")
    response = staff.get(f"/admin/pubsubpull/request/{request.pk}/change/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "/shop/customers/" in content
    link = f'<a href="/admin/pubsubpull/change/?request={request.pk}">1 change</a>'
    assert link in content
    changes = staff.get(f"/admin/pubsubpull/change/?request={request.pk}")
    assert [c.topic for c in changes.context["cl"].result_list] == ["shop.customer.insert"]
    assert "By request" in changes.content.decode()  # removable, like any filter
    assert staff.get("/admin/pubsubpull/request/").status_code == 200
    bad = staff.get("/admin/pubsubpull/change/?request=not-a-uuid")
    assert bad.status_code == 302 and bad["Location"].endswith("?e=1")
    unknown = staff.get(f"/admin/pubsubpull/change/?request={uuid.uuid4()}")
    assert unknown.context["cl"].result_count == 0  # not every change


def test_request_list_filters_need_no_scan(staff: Client) -> None:
    with CaptureQueriesContext(connection) as queries:
        response = staff.get("/admin/pubsubpull/request/?status=2xx&method=POST&_facets=1")
    assert [r.path for r in response.context["cl"].result_list] == ["/shop/customers/"]
    assert staff.get("/admin/pubsubpull/request/?status=4xx").context["cl"].result_count == 0
    log = [query["sql"].upper() for query in queries.captured_queries]
    assert not [sql for sql in log if "DISTINCT" in sql]
    assert all(f"LIMIT {COUNT_CAP + 1}" in sql for sql in log if "COUNT(" in sql)


def test_field_diffs_of_a_payload_that_is_not_an_object() -> None:
    event = Change(model="billing.invoice", op="paid", new=["a", 1])
    assert diffs.field_diffs(event) == [diffs.FieldDiff(diffs.VALUE, diffs.ABSENT, ["a", 1], False)]
    assert diffs.pretty(diffs.ABSENT) == ""


# -- subscriptions, edited by staff with only the subscription permissions ----------------

HOOK = "http://127.0.0.1:8001/hook"  # under ALLOWED_TARGETS in test_project.settings


def user_with(username: str, *permissions: str, staff: bool = False) -> User:
    """A user (not a superuser) with these ``app_label.codename`` permissions."""
    user = User.objects.create_user(username, is_staff=staff)  # no password: force_login
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


@pytest.fixture
def clerk() -> User:
    """Staff who may add, change and view subscriptions, and view customers: nothing else."""
    return user_with(
        "clerk",
        "pubsubpull.add_subscription",
        "pubsubpull.change_subscription",
        "pubsubpull.view_subscription",
        "shop.view_customer",
        staff=True,
    )


@pytest.fixture
def clerk_client(clerk: User) -> Client:
    return logged_in(clerk)


@pytest.fixture
def alice() -> User:
    """A subscriber who may view customers but not orders."""
    return user_with("alice", "shop.view_customer")


@pytest.fixture
def root() -> User:
    return User.objects.create_superuser("root", password=None)


@pytest.fixture
def root_client(root: User) -> Client:
    return logged_in(root)


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def subscription(clerk: User) -> Subscription:
    """The clerk's own subscription: the only kind the clerk may see and edit."""
    return Subscription.objects.create(
        owner=clerk, name="customers", target=HOOK, topics=["shop.customer.*"], cursor="5-7"
    )


def url(subscription: Subscription | None = None) -> str:
    if subscription is None:
        return "/admin/pubsubpull/subscription/add/"
    return f"/admin/pubsubpull/subscription/{subscription.pk}/change/"


def form(subscription: Subscription, **changes: Any) -> dict[str, Any]:
    """The change form's POST data as the admin shows it, with ``changes``."""
    data: dict[str, Any] = {
        "name": subscription.name,
        "target": subscription.target,
        "topics": json.dumps(subscription.topics),
        "filter": subscription.filter,
        "batch_size": subscription.batch_size,
        "status": subscription.status,
        "cursor": subscription.cursor,
        "max_bytes": subscription.max_bytes or "",
        "payload": subscription.payload,
        "format": subscription.format,
    }
    return {**data, **changes}


def row(subscription: Subscription) -> dict[str, Any]:
    """The subscription's database row."""
    return dict(Subscription.objects.filter(pk=subscription.pk).values().get())


def errors(response: Response) -> dict[str, list[str]]:
    """The admin form's errors (the page is shown again, nothing saved)."""
    assert response.status_code == 200, response.status_code
    return dict(response.context["adminform"].form.errors)


@pytest.mark.parametrize(
    "target",
    [
        "python:builtins.print",  # the worker would import and call it
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/latest/meta-data/",
        "https://127.0.0.1/hook",  # loopback, https: not under the http:// prefix
        "http://127.0.0.2:8001/hook",  # loopback, another address than the allowed one
        "http://[::1]:8001/hook",
        "https://localhost/hook",
        "http://10.0.0.1/hook",  # private
    ],
)
def test_change_to_a_refused_target_saves_nothing(
    clerk_client: Client, subscription: Subscription, target: str
) -> None:
    before = row(subscription)
    response = clerk_client.post(url(subscription), form(subscription, target=target))
    assert list(errors(response)) == ["target"]
    assert row(subscription) == before


def test_add_with_a_python_target_saves_nothing(clerk_client: Client, clerk: User) -> None:
    data = {
        "owner": clerk.pk,
        "name": "printer",
        "target": "python:builtins.print",
        "topics": "[]",
        "filter": "",
        "batch_size": 100,
        "status": "active",
        "cursor": "0-0",
        "payload": "full",
        "format": "batch",
    }
    response = clerk_client.post(url(), data)
    assert "is not an absolute http(s) URL" in errors(response)["target"][0]
    assert not Subscription.objects.exists()


def test_owner_cannot_be_changed(
    clerk_client: Client, alice: User, subscription: Subscription
) -> None:
    page = clerk_client.get(url(subscription)).content.decode()
    assert 'name="owner"' not in page and "clerk" in page  # shown, not editable
    response = clerk_client.post(url(subscription), form(subscription, owner=alice.pk))
    assert response.status_code == 302
    assert row(subscription)["owner_id"] == subscription.owner_id


def test_add_needs_an_owner_and_staff_may_only_lend_their_own_permissions(
    clerk_client: Client, clerk: User, alice: User, root: User, root_client: Client
) -> None:
    data = {
        "name": "mine",
        "target": HOOK,
        "topics": '["shop.customer.*"]',
        "filter": "",
        "batch_size": 100,
        "status": "active",
        "cursor": "0-0",
        "payload": "full",
        "format": "batch",
    }
    assert clerk_client.get(url()).context["adminform"].form.initial["owner"] == clerk.pk
    assert "owner" in errors(clerk_client.post(url(), data))  # required
    for other in (root, alice):  # a superuser would read everything
        assert "owner" in errors(clerk_client.post(url(), {**data, "owner": other.pk}))
    assert not Subscription.objects.exists()

    response = clerk_client.post(url(), {**data, "owner": clerk.pk, "topics": ""})
    assert response.status_code == 302
    mine = Subscription.objects.get()
    assert (mine.owner, mine.topics) == (clerk, [])  # an empty box: all topics, as in the API

    response = root_client.post(url(), {**data, "name": "alices", "owner": alice.pk})
    assert response.status_code == 302
    assert Subscription.objects.get(name="alices").owner == alice


def test_topics_are_bounded_by_what_the_owner_may_view(
    clerk_client: Client, subscription: Subscription, root_client: Client, alice: User
) -> None:
    before = row(subscription)
    response = clerk_client.post(url(subscription), form(subscription, topics='["shop.order.*"]'))
    assert errors(response) == {"topics": ["'shop.order.*': you may not view shop.order"]}
    response = clerk_client.post(url(subscription), form(subscription, topics='["shop.note.*"]'))
    assert "shop.note is not tracked" in errors(response)["topics"][0]
    response = clerk_client.post(url(subscription), form(subscription, topics='"shop.#"'))
    assert "must be a list of topic patterns" in errors(response)["topics"][0]
    assert row(subscription) == before

    # A superuser editing alice's subscription lends alice's permissions, not its own.
    alices = Subscription.objects.create(owner=alice, name="customers", target=HOOK)
    before = row(alices)
    response = root_client.post(url(alices), form(alices, topics='["shop.order.*"]'))
    assert errors(response) == {"topics": ["'shop.order.*': you may not view shop.order"]}
    assert row(alices) == before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("filter", "$.new.total >", "not a valid SQL/JSON path"),
        ("batch_size", 5000, "must be an integer from 1 to 1000"),
        ("cursor", "the-start", "is not a position"),
    ],
)
def test_filter_batch_size_and_cursor_follow_the_api(
    clerk_client: Client, subscription: Subscription, field: str, value: Any, message: str
) -> None:
    before = row(subscription)
    response = clerk_client.post(url(subscription), form(subscription, **{field: value}))
    assert message in " ".join(errors(response)[field])
    assert row(subscription) == before


def test_an_error_on_no_field_of_the_form_is_still_shown(
    clerk_client: Client, subscription: Subscription, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(owner: Any, data: Any) -> dict[str, Any]:
        raise subscriptions.Invalid({"body": ["refused as a whole"]})

    monkeypatch.setattr(subscriptions, "validate", refuse)  # a rule the form does not know
    before = row(subscription)
    response = clerk_client.post(url(subscription), form(subscription, batch_size=50))
    assert errors(response) == {"__all__": ["body: refused as a whole"]}
    assert row(subscription) == before


def test_a_valid_edit_saves_as_the_api_would(
    clerk_client: Client, subscription: Subscription
) -> None:
    changes = {
        "target": "HTTP://127.0.0.1:9000/other",
        "topics": '["shop.customer.insert"]',
        "filter": "$.new.active == true",
        "batch_size": 50,
        "status": "paused",
    }
    response = clerk_client.post(url(subscription), form(subscription, **changes))
    assert response.status_code == 302
    subscription.refresh_from_db()
    assert subscription.target == "http://127.0.0.1:9000/other"  # normalised by check_target
    assert subscription.topics == ["shop.customer.insert"]
    assert (subscription.filter, subscription.batch_size) == ("$.new.active == true", 50)
    assert subscription.status == "paused"


def test_a_name_taken_by_the_same_owner_is_a_form_error(
    clerk_client: Client, clerk: User, subscription: Subscription
) -> None:
    Subscription.objects.create(owner=clerk, name="orders", target=HOOK)
    response = clerk_client.post(url(subscription), form(subscription, name="orders"))
    assert "already exists" in " ".join(errors(response)["__all__"])
    assert row(subscription)["name"] == "customers"


def test_replay_drops_the_batch_in_flight_and_resume_clears_failures(
    clerk_client: Client, subscription: Subscription
) -> None:
    Subscription.objects.filter(pk=subscription.pk).update(
        batch_id="b1", batch_end="9-9", status="failing", failures=3, last_error="500"
    )
    subscription.refresh_from_db()
    response = clerk_client.post(url(subscription), form(subscription, cursor="0-0"))
    assert response.status_code == 302
    after = row(subscription)
    assert (after["cursor"], after["batch_id"], after["batch_end"]) == ("0-0", "", "")
    assert (after["status"], after["failures"]) == ("failing", 3)

    response = clerk_client.post(url(subscription), form(subscription, status="active"))
    assert response.status_code == 302
    after = row(subscription)
    assert (after["status"], after["failures"], after["last_error"]) == ("active", 0, "")


def test_the_secret_is_never_shown(clerk_client: Client, subscription: Subscription) -> None:
    secret = generate_secret()
    Subscription.objects.filter(pk=subscription.pk).update(secret=encrypt(secret))
    page = clerk_client.get(url(subscription)).content.decode()
    assert 'name="secret"' not in page
    assert secret not in page and row(subscription)["secret"] not in page


def test_actions_still_work_for_staff(clerk_client: Client, subscription: Subscription) -> None:
    response = clerk_client.post(
        "/admin/pubsubpull/subscription/",
        {"action": "pause", "_selected_action": [subscription.pk]},
    )
    assert response.status_code == 302
    assert row(subscription)["status"] == "paused"


def receive(changes: list[dict[str, Any]]) -> None:
    """A local subscriber, registered by the test that needs it."""


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Subscription:
    """The subscription ``local_subscribers.sync()`` makes for an ``@pubsubpull.on`` function."""
    monkeypatch.setattr(local_subscribers, "_registered", {})
    pubsubpull.on("shop.customer.*", filter="$.new.active == true")(receive)
    local_subscribers.sync()
    return Subscription.objects.get(owner=None)


def test_receivers_code_owned_fields_cannot_change_but_it_can_be_paused(
    root_client: Client, root: User, receiver: Subscription
) -> None:
    assert receiver.target == "python:tests.test_admin.receive"
    page = root_client.get(url(receiver)).content.decode()
    for field in ("owner", "name", "target", "topics", "filter"):
        assert f'name="{field}"' not in page
    assert 'name="status"' in page and 'name="cursor"' in page
    before = row(receiver)

    attack = {
        "owner": root.pk,
        "name": "renamed",
        "target": "python:builtins.print",
        "topics": '["shop.#"]',
        "filter": "",
    }
    response = root_client.post(url(receiver), form(receiver, status="paused", **attack))
    assert response.status_code == 302
    after = row(receiver)
    assert after["status"] == "paused"
    assert {k: after[k] for k in before if k not in ("status", "updated")} == {
        k: v for k, v in before.items() if k not in ("status", "updated")
    }


def test_receiver_replay_follows_the_api(root_client: Client, receiver: Subscription) -> None:
    Subscription.objects.filter(pk=receiver.pk).update(batch_id="b1", batch_end="9-9")
    response = root_client.post(url(receiver), form(receiver, batch_size=10))
    assert response.status_code == 302
    assert (row(receiver)["batch_id"], row(receiver)["batch_end"]) == ("b1", "9-9")  # kept
    receiver.refresh_from_db()
    before = row(receiver)
    response = root_client.post(url(receiver), form(receiver, cursor="yesterday"))
    assert "is not a position" in errors(response)["cursor"][0]
    assert row(receiver) == before
    response = root_client.post(url(receiver), form(receiver, cursor="0-0"))
    assert response.status_code == 302
    assert (row(receiver)["cursor"], row(receiver)["batch_id"]) == ("0-0", "")


# -- whose subscriptions staff see, how many they add, what an edit drops ------------------

CHANGELIST = "/admin/pubsubpull/subscription/"


@pytest.fixture
def others(root: User, alice: User, receiver: Subscription) -> list[Subscription]:
    """Subscriptions the clerk does not own: a superuser's, alice's and a local subscriber."""
    return [
        Subscription.objects.create(owner=root, name="everything", target=HOOK),
        Subscription.objects.create(owner=alice, name="customers", target=HOOK, cursor="5-7"),
        receiver,
    ]


def listed(client: Client) -> set[int]:
    """The primary keys the subscription change list shows to ``client``."""
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    return {subscription.pk for subscription in response.context["cl"].result_list}


def test_staff_see_only_their_own_subscriptions_and_superusers_all(
    clerk_client: Client,
    root_client: Client,
    subscription: Subscription,
    others: list[Subscription],
) -> None:
    assert listed(clerk_client) == {subscription.pk}
    assert listed(root_client) == {subscription.pk, *(other.pk for other in others)}
    for other in others:
        assert root_client.get(url(other)).status_code == 200


@pytest.mark.parametrize("whose", ["superuser", "another user", "local subscriber"])
def test_staff_cannot_view_change_or_delete_anothers_subscription(
    clerk_client: Client, clerk: User, others: list[Subscription], whose: str
) -> None:
    clerk.user_permissions.add(Permission.objects.get(codename="delete_subscription"))
    other = others[["superuser", "another user", "local subscriber"].index(whose)]
    before = row(other)
    base = f"/admin/pubsubpull/subscription/{other.pk}"
    for page in (url(other), f"{base}/history/", f"{base}/delete/"):
        response = clerk_client.get(page)
        assert response.status_code == 302 and response["Location"] == "/admin/", page
    # Redirecting what the owner may read to the clerk's own server:
    redirect = {
        "target": "http://127.0.0.1:9000/clerk",
        "topics": '["shop.customer.*"]',
        "filter": "",
        "status": "active",
        "cursor": "0-0",
        "payload": "full",
        "format": "batch",
    }
    assert clerk_client.post(url(other), form(other, **redirect)).status_code == 302
    assert clerk_client.post(f"{base}/delete/", {"post": "yes"}).status_code == 302
    assert row(other) == before


def test_object_permissions_follow_ownership(
    clerk: User, root: User, subscription: Subscription, others: list[Subscription]
) -> None:
    """The checks behind the pages, also for code that skips ``get_queryset``."""
    clerk.user_permissions.add(Permission.objects.get(codename="delete_subscription"))
    subscription_admin = site._registry[Subscription]
    for user, allowed in ((clerk, [subscription]), (root, [subscription, *others])):
        request = RequestFactory().get(CHANGELIST)
        request.user = User.objects.get(pk=user.pk)  # fresh permission cache
        for obj in [subscription, *others]:
            expected = obj in allowed
            assert subscription_admin.has_view_permission(request, obj) is expected
            assert subscription_admin.has_change_permission(request, obj) is expected
            assert subscription_admin.has_delete_permission(request, obj) is expected
        assert subscription_admin.has_change_permission(request)  # the change list


@pytest.mark.parametrize("action", ["pause", "resume", "replay_from_start"])
def test_actions_act_only_on_subscriptions_the_user_may_see(
    clerk_client: Client, subscription: Subscription, others: list[Subscription], action: str
) -> None:
    Subscription.objects.update(status="failing", failures=2, batch_id="b1", batch_end="9-9")
    before = {other.pk: row(other) for other in others}
    selected = [subscription.pk, *(other.pk for other in others)]
    response = clerk_client.post(CHANGELIST, {"action": action, "_selected_action": selected})
    assert response.status_code == 302
    assert {other.pk: row(other) for other in others} == before
    mine = row(subscription)
    changed = {
        "pause": ("status", "paused"),
        "resume": ("failures", 0),
        "replay_from_start": ("batch_id", ""),
    }[action]
    assert mine[changed[0]] == changed[1]


def add_form(owner: User, name: str) -> dict[str, Any]:
    return {
        "owner": owner.pk,
        "name": name,
        "target": HOOK,
        "topics": '["shop.customer.*"]',
        "filter": "",
        "batch_size": 100,
        "status": "active",
        "cursor": "0-0",
        "payload": "full",
        "format": "batch",
    }


def test_add_counts_against_max_subscriptions_per_owner(
    clerk_client: Client,
    clerk: User,
    subscription: Subscription,
    root_client: Client,
    alice: User,
    settings: Any,
) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "MAX_SUBSCRIPTIONS": 1}
    response = clerk_client.post(url(), add_form(clerk, "second"))
    assert "PUBSUBPULL['MAX_SUBSCRIPTIONS']" in errors(response)["name"][0]
    response = root_client.post(url(), add_form(clerk, "second"))  # superusers too
    assert "PUBSUBPULL['MAX_SUBSCRIPTIONS']" in errors(response)["name"][0]
    assert list(Subscription.objects.values_list("name", flat=True)) == ["customers"]

    # Per owner; an edit of one the owner has adds nothing.
    assert root_client.post(url(), add_form(alice, "alices")).status_code == 302
    response = clerk_client.post(url(subscription), form(subscription, batch_size=10))
    assert response.status_code == 302
    assert row(subscription)["batch_size"] == 10
    assert Subscription.objects.count() == 2


@pytest.mark.parametrize(
    ("field", "value", "dropped"),
    [
        ("target", "http://127.0.0.1:9000/other", True),
        ("topics", '["shop.customer.insert"]', True),
        ("filter", "$.new.active == true", True),
        ("cursor", "0-0", True),
        ("batch_size", 10, False),
        ("status", "paused", False),
    ],
)
def test_new_terms_drop_the_batch_in_flight(
    clerk_client: Client, subscription: Subscription, field: str, value: Any, dropped: bool
) -> None:
    Subscription.objects.filter(pk=subscription.pk).update(batch_id="b1", batch_end="9-9")
    data = form(subscription, **{field: value})
    # The page's hidden initial-topics comes back from the browser: a forged one that says
    # the topics did not change is not believed.
    data["initial-topics"] = data["topics"]
    response = clerk_client.post(url(subscription), data)
    assert response.status_code == 302
    after = row(subscription)
    assert after[field] == (json.loads(value) if field == "topics" else value)
    batch = ("", "") if dropped else ("b1", "9-9")
    assert (after["batch_id"], after["batch_end"]) == batch


def test_staff_see_only_their_own_subscriptions_deliveries(client: Client) -> None:
    staff = User.objects.create_user("deliveries-staff", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    other = User.objects.create_user("someone-else", password="pw")
    mine = Subscription.objects.create(owner=staff, name="mine", target="http://127.0.0.1:9/")
    theirs = Subscription.objects.create(owner=other, name="theirs", target="http://127.0.0.1:9/")
    attempts = {
        s.name: Delivery.objects.create(
            subscription=s,
            batch_id="b",
            first="1-1",
            last="1-2",
            count=2,
            error=f"error of {s.name}",
            duration=timedelta(0),
        )
        for s in (mine, theirs)
    }
    client.force_login(staff)
    listed = client.get("/admin/pubsubpull/delivery/").content.decode()
    assert "error of mine" in listed and "error of theirs" not in listed
    assert "theirs" not in listed  # not even in a filter
    own = client.get(f"/admin/pubsubpull/delivery/{attempts['mine'].pk}/change/")
    assert own.status_code == 200
    other_page = client.get(f"/admin/pubsubpull/delivery/{attempts['theirs'].pk}/change/")
    assert other_page.status_code == 302  # redirected away: not theirs to see


def attempt(subscription: Subscription, n: int, status_code: int | None = 200) -> Delivery:
    return Delivery.objects.create(
        subscription=subscription,
        batch_id=f"batch-{n}",
        first=f"1-{n}",
        last=f"1-{n}",
        count=1,
        status_code=status_code,
        error="" if status_code == 200 else f"<b>refused {n}</b>",
        duration=timedelta(milliseconds=n),
    )


def test_subscription_page_shows_its_recent_attempts(
    root_client: Client, subscription: Subscription
) -> None:
    for n in range(RECENT_ATTEMPTS + 5):
        attempt(subscription, n, 200 if n % 2 else None)
    content = root_client.get(url(subscription)).content.decode()
    table = content[content.index('<table class="pubsubpull-attempts">') :]
    table = table[: table.index("</table>")]
    batches = re.findall(r"<td>1-(\d+)</td><td>1-\d+</td>", table)
    newest = range(RECENT_ATTEMPTS + 4, 4, -1)
    assert [int(n) for n in batches] == list(newest)  # the last 20, newest first
    assert "&lt;b&gt;refused 24&lt;/b&gt;" in table and "<b>refused" not in table
    assert table.count('class="pubsubpull-failed"') == RECENT_ATTEMPTS // 2
    every = f'href="/admin/pubsubpull/delivery/?subscription__id__exact={subscription.pk}"'
    assert every in content


def test_subscription_page_without_attempts(
    root_client: Client, subscription: Subscription
) -> None:
    assert "none yet" in root_client.get(url(subscription)).content.decode()
    assert root_client.get(url()).status_code == 200  # the add page: no attempts field


def test_a_change_whose_request_row_is_gone_still_shows(staff: Client) -> None:
    # Changes hold no constraint on their request (migration 0017): a Request row deleted
    # by hand leaves its changes pointing at nothing, and the admin shows them without it.
    change = Change.objects.get(topic="shop.customer.insert")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pubsubpull_request")
    assert staff.get(f"/admin/pubsubpull/change/{change.pk}/change/").status_code == 200
    listed = staff.get("/admin/pubsubpull/change/")
    assert listed.status_code == 200
    assert change.pk in [c.pk for c in listed.context["cl"].result_list]
