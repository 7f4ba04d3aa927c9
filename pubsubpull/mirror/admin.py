"""Admin: each mirror's progress, read-only (``manage.py pubsubpull pull`` writes it)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Mirror


@admin.register(Mirror)
class MirrorAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["label", "into", "service", "backfilled", "cursor", "updated"]
    list_filter = ["backfilled"]
    search_fields = ["label", "into", "service"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
