"""Which subscriptions new changes concern, found at a cost that grows with the new
changes, not with the subscriptions.

A wake-up's dispatch asks :func:`concerned`: it reads the distinct topics of the changes
that became visible since its previous look (``new_topics.sql``: an index range scan over
just those changes) and matches them against each distinct set of topic patterns of the
active subscriptions once (``active_topic_sets.sql``: PostgreSQL groups the
subscriptions; 10,000 subscriptions sharing 40 topic sets are 40 matches). The other
reasons a subscription has work need no dispatch: a backlog (its job queues the next),
a retry (queued for its time), a batch in flight of a dead worker (``tasks.recover``), a
new or changed subscription (its PUT queues it). The periodic sweep still looks at every
subscription (:func:`pubsubpull.delivery.due_subscriptions`), as the safety net.

Permissions and filters are left to the delivery job, which reads only what the owner
may see: a subscription matched here on topics alone may find nothing, never the other
way round.
"""

from __future__ import annotations

import functools
import json
import re
import threading

from django.db import connection

from . import topics
from .sql import load

_lock = threading.Lock()
_since: str | None = None  # the horizon of this process's previous look (xid8 text)


def concerned() -> list[int] | None:
    """Ids of the active subscriptions whose topics match changes that became visible
    since this process's previous call; None on its first call (nothing known yet: the
    caller looks at every subscription)."""
    global _since
    with _lock:
        since = _since
        with connection.cursor() as cursor:
            cursor.execute(load("new_topics"), {"since": since})
            horizon, new = cursor.fetchone()
            _since = horizon
            if since is None or int(horizon) < int(since):  # first look, or another database
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
    global _since
    with _lock:
        _since = None


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
