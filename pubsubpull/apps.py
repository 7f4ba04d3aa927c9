from __future__ import annotations

import sys
from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate


class PubSubPullConfig(AppConfig):
    name = "pubsubpull"
    verbose_name = "pubsubpull"
    default_auto_field = "django.db.models.BigAutoField"

    #: Whether the workers' wake-up middleware could be added (system check E007).
    wakeups_installed = False

    def ready(self) -> None:
        from . import checks, registry, worker  # noqa: F401 - checks register themselves
        from .change_context import install

        self.wakeups_installed = worker.install_worker_middleware()
        if self.wakeups_installed and worker.is_worker_command(sys.argv):
            worker.start_watching()  # no DB query here: the watcher's thread connects

        connection_created.connect(install, dispatch_uid="pubsubpull.context")
        post_migrate.connect(_install_triggers, sender=self, dispatch_uid="pubsubpull.triggers")

        def clear_tables(setting: str, **kwargs: Any) -> None:
            if setting == "PUBSUBPULL":
                registry.tables.cache_clear()

        setting_changed.connect(clear_tables, weak=False, dispatch_uid="pubsubpull.tables")


def _install_triggers(using: str = "default", verbosity: int = 1, **kwargs: Any) -> None:
    """After ``migrate``: bring every tracked table's capture triggers up to date, and
    register the local subscribers (``@pubsubpull.on``) as subscriptions."""
    from . import capture, local_subscribers

    if using != "default":
        return  # pubsubpull lives in the default database only (check E021)
    local_subscribers.sync()
    for item in capture.install(using):
        if item.state != "current" and verbosity >= 1:
            action = "Dropped" if item.state == "orphaned" else "Installed"
            print(f"  pubsubpull: {action} capture of {item.table or item.function} ({item.state})")
