"""Which subscriptions new changes concern, found at a cost that grows with the new
changes, not with the subscriptions.

A wake-up's dispatch asks :func:`concerned`: it reads the distinct topics of the changes
that became visible since its previous look (``new_topics.sql``: an index range scan over
just those changes) and matches them against each distinct set of topic patterns of the
active subscriptions once (``active_topic_sets.sql``: PostgreSQL groups the
subscriptions; 10,000 subscriptions sharing 40 topic sets are 40 matches). The other
reasons a subscription has work need no dispatch: a backlog (its job queues the next),
a retry (queued for its time), a batch in flight of a dead worker (``tasks.recover``), a
new, changed, resumed or replayed subscription (``tasks.wake``). The periodic sweep, and
each process's dispatch once every ``SWEEP_INTERVAL``, still look at every subscription
(:func:`pubsubpull.delivery.due_subscriptions`), as the safety net.

Permissions and filters are left to the delivery job, which reads only what the owner
may see: a subscription matched here on topics alone may find nothing, never the other
way round.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
import time

from django.db import connection

from . import conf, topics
from .sql import load

_lock = threading.Lock()
_since: str | None = None  # the horizon of this process's previous look (xid8 text)
_looked_at_all = -math.inf  # when concerned() last answered None (monotonic seconds)


def concerned() -> list[int] | None:
    """Ids of the active subscriptions whose topics match changes that became visible
    since this process's previous call; None (the caller looks at every subscription) on
    its first call, and again once ``SWEEP_INTERVAL`` seconds have passed since it last
    did: the periodic sweep shares the dispatch's queueing lock, so it is skipped while
    a wake-up's dispatch waits, which under steady writes is most of the time."""
    global _since, _looked_at_all
    with _lock:
        since = _since
        with connection.cursor() as cursor:
            cursor.execute(load("new_topics"), {"since": since})
            horizon, new = cursor.fetchone()
            _since = horizon
            now = time.monotonic()
            if (
                since is None
                or int(horizon) < int(since)  # another database
                or now - _looked_at_all >= conf.settings.SWEEP_INTERVAL
            ):
                _looked_at_all = now
                return None
            if not new:
                return []
            cursor.execute(load("active_topic_sets"))
            sets = cursor.fetchall()
    found: list[int] = []
    for patterns, ids in sets:
        if any(_matches(patterns, topic) for topic in new):
            found += ids
    return found


def forget() -> None:
    """Forget the previous look (the next :func:`concerned` returns None)."""
    global _since, _looked_at_all
    with _lock:
        _since, _looked_at_all = None, -math.inf


@functools.lru_cache(maxsize=4096)
def _regex(patterns: str) -> re.Pattern[str] | None:
    """The compiled regex of a JSON array of topic patterns; None for all topics (and for
    patterns no PUT would have accepted: their delivery job finds out)."""
    try:
        regex = topics.any_regex(json.loads(patterns))
    except (ValueError, TypeError, AttributeError):  # InvalidPattern is a ValueError
        return None
    return None if regex is None else re.compile(regex)


@functools.lru_cache(maxsize=65536)
def _matches(patterns: str, topic: str) -> bool:
    regex = _regex(patterns)
    return regex is None or regex.match("." + topic) is not None
