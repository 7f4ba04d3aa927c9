"""Admin: the change log and requests, read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Change, Request


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ChangedFields:
    @admin.display(description="fields")
    def changed_fields(self, change: Change) -> str:
        return ", ".join(change.fields)


class ChangeInline(ChangedFields, admin.TabularInline):  # type: ignore[type-arg]
    model = Change
    fields = ["id", "topic", "object_pk", "changed_fields", "created"]
    readonly_fields = fields
    can_delete = False
    extra = 0
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Change)
class ChangeAdmin(ChangedFields, ReadOnlyAdmin):
    list_display = ["id", "topic", "object_pk", "request", "created"]
    list_filter = ["op", "model", "topic", "created"]
    search_fields = ["=object_pk", "topic"]
    date_hierarchy = "created"
    list_select_related = ["request"]
    fields = [
        "id", "txid", "topic", "model", "table", "op", "object_pk", "changed_fields",
        "old", "new", "request", "context", "created",
    ]  # fmt: skip
    readonly_fields = fields
    show_full_result_count = False  # counting a large log is slow


@admin.register(Request)
class RequestAdmin(ReadOnlyAdmin):
    list_display = ["started", "method", "path", "username", "status", "duration"]
    list_filter = ["method", "status", "started"]
    search_fields = ["path", "username"]
    date_hierarchy = "started"
    fields = ["id", "user", "username", "method", "path", "started", "duration", "status"]
    readonly_fields = fields
    inlines = [ChangeInline]
