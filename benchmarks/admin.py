"""Admin: the change log's pages on a log of 1,000,000 changes, against a bare query.

The log is filled straight into ``pubsubpull_change`` with ``INSERT ... SELECT`` from
``generate_series`` (no tracked table, no trigger): changes of five models, ten to a request
(100,000 requests), over a day and a half; 20 subscriptions of one owner, one of them with
200,000 delivery attempts. Each page is fetched with Django's test ``Client`` logged in as a
superuser (the whole stack: middleware, session, admin view, templates; ``DEBUG = False``).

Baseline, measured in the same repetition: ``Change.objects.order_by("-id")[:100]`` rendered
through a plain Django template (a table of id, topic, pk and time): what any list of the
newest changes costs. Also shown, untimed against a goal: what the admin used to pay on
every change list view (a full ``count()`` and a ``DISTINCT`` over topics).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from benchmarks import harness
from benchmarks.delivery import scaled

FULL = 1_000_000  # changes in a full run
PER_REQUEST = 10  # changes per request
SUBSCRIPTIONS = 20
RECENT = 20  # attempts a subscription's page lists (pubsubpull.admin.RECENT_ATTEMPTS)
GOAL = 0.300  # seconds per page
READS = 5  # fetches per page and repetition; the median is kept

# One statement: changes of benchapp.trackedrow (60 %), shop.order (25 %), shop.customer
# (14 %) and shop.product (1 %: a rare model); inserts, updates (old and new differ in
# amount) and deletes; ten consecutive changes per request; one change every 0.1 s.
_CHANGES = """
INSERT INTO pubsubpull_change (topic, model, "table", op, pk, old, new, request_id, created)
SELECT c.model || '.' || c.op, c.model, replace(c.model, '.', '_'), c.op, g::text,
       CASE WHEN c.op <> 'insert' THEN c.row END,
       CASE WHEN c.op = 'update' THEN c.row || jsonb_build_object('amount', g %% 1000 + 1)
            WHEN c.op = 'insert' THEN c.row END,
       md5(((g - 1) / %(per_request)s)::text)::uuid,
       %(end)s::timestamptz - (%(count)s - g) * interval '100 milliseconds'
FROM generate_series(1, %(count)s) AS g,
LATERAL (SELECT
    CASE WHEN g %% 100 < 60 THEN 'benchapp.trackedrow' WHEN g %% 100 < 85 THEN 'shop.order'
         WHEN g %% 100 < 99 THEN 'shop.customer' ELSE 'shop.product' END AS model,
    CASE WHEN (g / 100) %% 10 < 6 THEN 'insert' WHEN (g / 100) %% 10 < 9 THEN 'update'
         ELSE 'delete' END AS op,
    jsonb_build_object('id', g, 'name', 'customer ' || g, 'email', 'c' || g || '@example.com',
                       'amount', g %% 1000, 'active', g %% 3 <> 0,
                       'payload', jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b')))
        AS row
) AS c
"""
_REQUESTS = """
INSERT INTO pubsubpull_request (id, username, method, path, started, duration, status)
SELECT md5(r::text)::uuid, 'user' || r %% 50, 'POST', '/shop/customers/' || r || '/',
       %(end)s::timestamptz - (%(requests)s - r) * interval '1 second',
       interval '15 milliseconds', CASE WHEN r %% 20 = 0 THEN 500 ELSE 200 END
FROM generate_series(0, %(requests)s - 1) AS r
"""
_DELIVERIES = """
INSERT INTO pubsubpull_delivery
    (subscription_id, batch_id, first, last, count, status_code, error, duration, created,
     request_headers, response_headers, response_body)
SELECT %(subscription)s, md5(d::text), '1-' || d * 100, '1-' || d * 100 + 99, 100,
       CASE WHEN d %% 10 = 0 THEN 503 ELSE 200 END,
       CASE WHEN d %% 10 = 0 THEN 'HTTP 503' ELSE '' END,
       interval '20 milliseconds', %(end)s::timestamptz - (%(count)s - d) * interval '1 second',
       '{"Content-Type": "application/json"}', '{}', ''
FROM generate_series(1, %(count)s) AS d
"""

BASELINE_TEMPLATE = """<table>{% for change in changes %}
<tr><td>{{ change.id }}</td><td>{{ change.topic }}</td><td>{{ change.object_pk }}</td>
<td>{{ change.created }}</td></tr>{% endfor %}</table>"""


def execute(sql: str, params: dict[str, Any]) -> None:
    """Run one statement with named parameters on Django's connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def fill(count: int) -> dict[str, Any]:
    """The log, its requests, subscriptions and attempts; what the pages will show."""
    from django.contrib.auth.models import User

    from pubsubpull.models import Change, Request, Subscription

    end = datetime.datetime.now(datetime.UTC)
    requests = -(-count // PER_REQUEST)
    harness.execute("TRUNCATE pubsubpull_delivery, pubsubpull_subscription CASCADE")
    harness.reset_tables(changes=True)
    params = {"count": count, "per_request": PER_REQUEST, "end": end, "requests": requests}
    execute(_REQUESTS, params)
    execute(_CHANGES, params)
    owner = User.objects.filter(username="admin-bench").first() or User.objects.create_superuser(
        "admin-bench", password=None
    )
    subscriptions = [
        Subscription.objects.create(
            owner=owner,
            name=f"subscriber-{n}",
            target=f"http://127.0.0.1:9/{n}",
            # behind by all (lag counted up to its cap), by a few, or caught up
            cursor=["0-0", f"0-{count - 50}", f"0-{count}"][n % 3],
            topics=["shop.#"] if n % 4 == 0 else [],
        )
        for n in range(SUBSCRIPTIONS)
    ]
    attempts = count // 5
    execute(_DELIVERIES, {"subscription": subscriptions[0].pk, "count": attempts, "end": end})
    harness.execute(
        "VACUUM ANALYZE pubsubpull_change, pubsubpull_request, pubsubpull_delivery, "
        "pubsubpull_subscription"
    )
    update = Change.objects.filter(op="update", id__gte=count // 2).order_by("id").first()
    request = Request.objects.order_by("started")[requests // 2]
    assert update is not None
    return {
        "owner": owner,
        "change": update,
        "request": request,
        "subscription": subscriptions[0],
        "attempts": attempts,
        "count": count,
    }


def index_cost(count: int, reps: int) -> tuple[list[float], list[float]]:
    """Seconds to write ``count`` changes into the log with the admin's indexes on the change
    table and without them (dropped for the moment), interleaved, each repetition on an
    empty table: what those indexes add to writing the log."""
    from django.db import connection

    from pubsubpull.models import Change

    added = [i for i in Change._meta.indexes if i.name != "pubsubpull_change_position"]
    end = datetime.datetime.now(datetime.UTC)
    params = {"count": count, "per_request": PER_REQUEST, "end": end}
    params["requests"] = -(-count // PER_REQUEST)

    def empty_log() -> None:
        harness.reset_tables(changes=True)
        execute(_REQUESTS, params)  # what the changes' request_id refer to
        harness.checkpoint()

    with_indexes, without = [], []
    for _ in range(reps):
        empty_log()
        with_indexes.append(harness.measure(lambda: execute(_CHANGES, params)))
        with connection.schema_editor() as editor:
            for index in added:
                editor.remove_index(Change, index)
        try:
            empty_log()
            without.append(harness.measure(lambda: execute(_CHANGES, params)))
        finally:
            harness.reset_tables(changes=True)
            with connection.schema_editor() as editor:
                for index in added:
                    editor.add_index(Change, index)
    return with_indexes, without


def pages(state: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(name, URL, how the report shows it, whether it has a goal): the four pages of the
    issue, then the others."""
    change, request, subscription = state["change"], state["request"], state["subscription"].pk
    last = min(100, state["count"] // 100)  # the last page the capped count reaches
    since = datetime.datetime.now(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    until = since + datetime.timedelta(days=1)
    today = urlencode({"created__gte": since.isoformat(), "created__lt": until.isoformat()})
    after = until + datetime.timedelta(days=1)
    empty = urlencode({"created__gte": until.isoformat(), "created__lt": after.isoformat()})
    day_ago = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    day_ago -= datetime.timedelta(days=1)
    hour = urlencode(
        {
            "created__gte": day_ago.isoformat(),
            "created__lt": (day_ago + datetime.timedelta(hours=1)).isoformat(),
        }
    )
    base = "/admin/pubsubpull"
    return [
        ("change list", f"{base}/change/", "/change/", True),
        ("change page (diff)", f"{base}/change/{change.pk}/change/", "/change/<id>/change/", True),
        ("request list", f"{base}/request/", "/request/", True),
        ("subscription list", f"{base}/subscription/", "/subscription/", True),
        ("a rare model's changes (1 %)", f"{base}/change/?model=shop.product", "?model=", False),
        ("a model without changes", f"{base}/change/?model=billing.invoice", "?model=", False),
        ("deletes", f"{base}/change/?op=delete", "?op=delete", False),
        ("one request's changes", f"{base}/change/?request={request.pk}", "?request=", False),
        ("changes of today", f"{base}/change/?{today}", "?created__gte=&created__lt=", False),
        (
            "changes of tomorrow (none)",
            f"{base}/change/?{empty}",
            "?created__gte=&created__lt=",
            False,
        ),
        (
            "changes of an hour a day ago (a URL made by hand)",
            f"{base}/change/?{hour}",
            "?created__gte=&created__lt=",
            False,
        ),
        (f"change list, page {last}", f"{base}/change/?p={last}", f"?p={last}", False),
        ("request page", f"{base}/request/{request.pk}/change/", "/request/<id>/change/", False),
        (
            f"subscription page ({RECENT} attempts)",
            f"{base}/subscription/{subscription}/change/",
            "/subscription/<id>/change/",
            False,
        ),
    ]


def baseline() -> Callable[[], str]:
    """The newest 100 changes through a plain template (no admin, no HTTP)."""
    from django.template import Context, Template

    from pubsubpull.models import Change

    template = Template(BASELINE_TEMPLATE)

    def render() -> str:
        return template.render(Context({"changes": Change.objects.order_by("-id")[:100]}))

    return render


def fetch(client: Any, url: str) -> Callable[[], None]:
    def get() -> None:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        response.content  # noqa: B018 - rendered lazily: render it inside the timing

    return get


def best(fn: Callable[[], Any]) -> float:
    """The median of :data:`READS` timings of ``fn`` (after one untimed call: warm caches)."""
    fn()
    return harness.median(harness.measure(fn) for _ in range(READS))


def plans(state: dict[str, Any]) -> list[list[str]]:
    """What PostgreSQL does for each list's query: its scan nodes (``EXPLAIN``)."""
    from django.utils import timezone

    from pubsubpull.models import Change, Delivery, Request

    now = timezone.now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    day_ago = now - datetime.timedelta(days=1)
    tomorrow = today + datetime.timedelta(days=1)
    hour_later = day_ago + datetime.timedelta(hours=1)
    newest = Change.objects.order_by("-id")
    queries: list[tuple[str, Any]] = [
        ("newest changes", newest[:100]),
        ("capped count", newest[:10_001]),
        ("a model's newest changes", newest.filter(model="shop.product")[:100]),
        ("an op's newest changes", newest.filter(op="delete")[:100]),
        ("a request's changes", newest.filter(request_id=state["request"].pk)[:100]),
        ("changes created today", newest.filter(created__gte=today)[:100]),
        ("changes of tomorrow (none)", newest.filter(created__gte=tomorrow)[:100]),
        ("changes of an hour a day ago", newest.filter(created__range=(day_ago, hour_later))[:100]),
        ("newest requests", Request.objects.order_by("-started")[:100]),
        (
            "a subscription's recent attempts",
            Delivery.objects.filter(subscription=state["subscription"]).order_by("-created", "-id")[
                :20
            ],
        ),
    ]
    rows = []
    for name, query in queries:
        text = query.explain()
        nodes = [
            line.strip().lstrip("-> ").split("  (")[0]
            for line in text.splitlines()
            if "Scan" in line
        ]
        rows.append([name, "; ".join(nodes)])
    return rows


def run(quick: bool, dry_run: bool) -> str:
    """Fill the log, time each admin page against the baseline; the markdown section."""
    from django.test import Client

    from pubsubpull.models import Change

    count = harness.choose(quick, dry_run, full=FULL, fast=200_000, dry=2_000)
    reps = harness.repetitions(quick, dry_run)
    written = harness.choose(quick, dry_run, full=100_000, fast=20_000, dry=1_000)
    costs = index_cost(written, reps)
    began = time.perf_counter()
    state = fill(count)
    filled = time.perf_counter() - began
    client = Client()
    client.force_login(state["owner"])
    render = baseline()
    listed = pages(state)
    times: dict[str, list[float]] = {name: [] for name, _, _, _ in listed}
    baselines = []
    for _ in range(reps):  # interleaved: drift hits the baseline and every page alike
        baselines.append(best(render))
        for name, url, _, _ in listed:
            times[name].append(best(fetch(client, url)))
    full_count = best(Change.objects.count)
    distinct = best(lambda: list(Change.objects.values_list("topic", flat=True).distinct()))
    explained = plans(state)
    harness.execute("TRUNCATE pubsubpull_delivery, pubsubpull_subscription CASCADE")
    harness.reset_tables(changes=True)
    old = {"full count": full_count, "distinct topics": distinct}
    section = report(count, reps, filled, state, listed, times, baselines, old, explained)
    return section + "\n\n" + index_report(written, *costs)


def index_report(count: int, with_indexes: list[float], without: list[float]) -> str:
    return "\n".join(
        [
            "### What the admin's indexes cost writers",
            "",
            f"{count:,} changes written into the log in one `INSERT ... SELECT` (the generator "
            "above; their request rows written beforehand, untimed), with the `(model, id)` "
            "and BRIN `created` indexes of migration 0010 and with them dropped, interleaved, "
            "each on an empty table. This is the log's own write, the part of capture cost "
            "they add to (the `floor` of the capture section); a tracked write also pays for "
            "its own row.",
            "",
            harness.table(
                ["write", "with indexes s", "without s", "with / without"],
                [
                    [
                        f"{count:,} changes",
                        harness.seconds_cell(with_indexes),
                        harness.seconds_cell(without),
                        harness.ratio_cell(harness.ratios(with_indexes, without)),
                    ]
                ],
            ),
        ]
    )


def report(
    count: int,
    reps: int,
    filled: float,
    state: dict[str, Any],
    listed: list[tuple[str, str, str, bool]],
    times: dict[str, list[float]],
    baselines: list[float],
    old: dict[str, float],
    explained: list[list[str]],
) -> str:
    rows = [["baseline: newest 100 through a template", ms_cell(baselines), "1×", ""]]
    goals = []
    for name, _, shown, has_goal in listed:
        values = times[name]
        rows.append(
            [
                f"{name} `{shown}`",
                ms_cell(values),
                harness.ratio_cell(harness.ratios(values, baselines)),
                f"< {GOAL * 1000:.0f} ms" if has_goal else "",
            ]
        )
        if has_goal:
            median = harness.median(values)
            goals.append(
                f"- {name}: {median * 1000:.0f} ms < {GOAL * 1000:.0f} ms: "
                f"{harness.verdict(median < GOAL)}"
            )
    lines = [
        "## Admin",
        "",
        f"The admin's pages on a log of {count:,} changes{scaled(count, FULL)} (filled in "
        f"{filled:.0f} s with `INSERT ... SELECT` from `generate_series`: five models, one of "
        f"them 1 % of the log; {count // PER_REQUEST:,} requests of {PER_REQUEST} changes; "
        f"{SUBSCRIPTIONS} subscriptions, one with {state['attempts']:,} delivery attempts). "
        "Each page fetched with Django's test `Client` as a superuser (middleware, session, "
        f"admin view and templates; `DEBUG = False`): the median of {READS} fetches after a "
        f"warm-up, {reps} repetition(s), range in parentheses. **Baseline**: "
        '`Change.objects.order_by("-id")[:100]` rendered through a plain Django template, '
        "measured in each repetition.",
        "",
        harness.table(["page", "ms", "/ baseline", "goal"], rows),
        "",
        "Goals:",
        "",
        *goals,
        "",
        f"What the change list used to run on every view, gone now: a full `count()` "
        f"{old['full count'] * 1000:.0f} ms and a `DISTINCT` over topics (its topic filter) "
        f"{old['distinct topics'] * 1000:.0f} ms.",
        "",
        "What PostgreSQL does for the lists' queries (`EXPLAIN`, scan nodes):",
        "",
        harness.table(["query", "plan"], explained),
        "",
        "Notes. Lists are newest first (`-id`, the primary key read backwards; requests by "
        "their `started` index) and counted by `CappedPaginator` up to 10,000 rows (one "
        "`count(*)` over a `LIMIT 10001` subquery) instead of the whole table; the model and "
        "op filters list the registry's models and the four row operations instead of "
        "reading the log's distinct values. A model's changes use the `(model, id)` index, "
        "a subscription's attempts `(subscription, created, id)`. The date filter's choices "
        "(today, past 7 days, this month, this year) end now: the primary key read backwards "
        "meets their changes first, and when there are none the BRIN index on `created` "
        "answers. A range far back, which only a URL made by hand asks for, is still read "
        "backwards from the newest change (the planner expects to meet its rows soon): "
        "hundreds of milliseconds on this log. The subscription list counts each "
        "subscription's lag up to `LAG_CAP` (no change JSON unless a subscription has a "
        "filter).",
    ]
    return "\n".join(lines)


def ms_cell(values: list[float]) -> str:
    """Median milliseconds with their range."""
    return harness.seconds_cell([v * 1000 for v in values])
