"""The mirror as a Procrastinate task, for services that keep it in their worker.

Procrastinate finds this module when ``pubsubpull.mirror`` is installed. One job is one
pass of ``manage.py pubsubpull pull`` without ``--follow``: run it periodically::

    from procrastinate.contrib.django import app
    from pubsubpull.mirror.tasks import mirror

    @app.periodic(cron="*/1 * * * *")
    @app.task(queue="pubsubpull")
    def mirror_customers(timestamp: int) -> None:
        mirror("https://shop.example.com/pubsubpull/", "shop.customer", "billing.Customer")
"""

from __future__ import annotations

import os

from django.db import connection
from procrastinate.contrib.django import app

from pubsubpull.client import Service

from . import sync

# First key of the advisory lock one pass holds on its mirror ("pspm"); the second is the
# mirror's id. Session-level: it takes no transaction id, so it holds no horizon back.
MIRROR_LOCKS = 0x7073706D


@app.task(name="pubsubpull.mirror", queue="pubsubpull")
def mirror(url: str, label: str, into: str, token_env: str = "PUBSUBPULL_TOKEN") -> int:
    """Backfill what the local copy lacks, then apply the changes there are; returns how
    many changes were applied (0 as well when another pass of the same mirror is running).

    The API token is read from the environment variable ``token_env`` when the job runs:
    job arguments are stored in Procrastinate's table, so the token never is.
    """
    with Service(url, token=os.environ.get(token_env)) as service:
        state = sync.start(service, label.lower(), into)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s::int)", [MIRROR_LOCKS, state.pk])
            if not cursor.fetchone()[0]:
                return 0
        try:
            if not state.backfilled:
                sync.backfill(service, state)
            return sync.follow(service, state)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s::int)", [MIRROR_LOCKS, state.pk])
