"""Admin: the change log and requests, read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from . import subscriptions
from .models import Change, Delivery, Request, Subscription
from .positions import START


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
    fields = readonly_fields = ("id", "topic", "object_pk", "changed_fields", "created")
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
    fields = readonly_fields = (
        "id", "txid", "topic", "model", "table", "op", "object_pk", "changed_fields",
        "old", "new", "request", "context", "created",
    )  # fmt: skip
    show_full_result_count = False  # counting a large log is slow


@admin.register(Request)
class RequestAdmin(ReadOnlyAdmin):
    list_display = ["started", "method", "path", "username", "status", "duration"]
    list_filter = ["method", "status", "started"]
    search_fields = ["path", "username"]
    date_hierarchy = "started"
    fields = readonly_fields = (
        "id", "user", "username", "method", "path", "started", "duration", "status",
    )  # fmt: skip
    inlines = [ChangeInline]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Subscriptions with their lag and last error; the secret is never shown."""

    list_display = ["name", "owner", "target", "status", "lag", "failures", "last_error"]
    list_filter = ["status"]
    search_fields = ["name", "target", "owner__username"]
    fields = [
        "owner", "name", "target", "topics", "filter", "batch_size", "status", "cursor",
        "lag", "failures", "last_error", "next_attempt", "last_delivered", "created", "updated",
    ]  # fmt: skip
    readonly_fields = [
        "lag", "failures", "last_error", "next_attempt", "last_delivered", "created", "updated",
    ]  # fmt: skip
    actions = ["pause", "resume", "replay_from_start"]

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        if "cursor" in form.changed_data:  # a replay: the batch in flight no longer applies
            obj.batch_id = obj.batch_end = ""
        if "status" in form.changed_data and obj.status == Subscription.Status.ACTIVE:
            obj.failures, obj.next_attempt, obj.last_error = 0, None, ""
        super().save_model(request, obj, form, change)

    @admin.display(description="lag")
    def lag(self, subscription: Subscription) -> int:
        return subscriptions.lag(subscription)

    @admin.action(description="Pause the selected subscriptions")
    def pause(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        queryset.update(status=Subscription.Status.PAUSED)

    @admin.action(description="Resume the selected subscriptions (clears failures)")
    def resume(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        queryset.update(
            status=Subscription.Status.ACTIVE, failures=0, next_attempt=None, last_error=""
        )

    @admin.action(description="Replay the selected subscriptions from the start of the log")
    def replay_from_start(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        queryset.update(cursor=str(START), batch_id="", batch_end="")
        self.message_user(request, "To replay from a position, edit the subscription's cursor.")


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ["created", "subscription", "count", "first", "last", "status_code", "error"]
    list_filter = ["status_code", "subscription"]
    list_select_related = ["subscription"]
    date_hierarchy = "created"
    show_full_result_count = False
