"""Admin: the change log, requests and delivery attempts, read-only; subscriptions, edited by
the API's rules (pause, resume and replay as actions)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import ForeignKey, QuerySet
from django.http import HttpRequest

from . import subscriptions
from .models import Change, Delivery, Request, Subscription, SubscriptionQuerySet
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
        "id",
        "txid",
        "topic",
        "model",
        "table",
        "op",
        "object_pk",
        "changed_fields",
        "old",
        "new",
        "request",
        "context",
        "created",
    )
    show_full_result_count = False  # counting a large log is slow


@admin.register(Request)
class RequestAdmin(ReadOnlyAdmin):
    list_display = ["started", "method", "path", "username", "status", "duration"]
    list_filter = ["method", "status", "started"]
    search_fields = ["path", "username"]
    date_hierarchy = "started"
    fields = readonly_fields = (
        "id",
        "user",
        "username",
        "method",
        "path",
        "started",
        "duration",
        "status",
    )
    inlines = [ChangeInline]


#: What a local subscriber's code sets (``@pubsubpull.on``, via ``local_subscribers.sync``).
RECEIVER_FIELDS = ("owner", "name", "target", "topics", "filter")
#: The fields the admin checks with the API's rules (:func:`subscriptions.validate`).
VALIDATED_FIELDS = (
    *("target", "topics", "filter", "batch_size", "max_bytes", "payload", "format"),
    "cursor",
)
#: Fields whose change drops the batch in flight: the next batch follows the new terms
#: (as :func:`subscriptions.save` does), or starts from the new cursor (a replay).
TERMS_FIELDS = ("target", "topics", "filter", "max_bytes", "payload", "format", "cursor")


class SubscriptionForm(forms.ModelForm):  # type: ignore[type-arg]
    """A subscription as the admin edits it, checked by the API's rules.

    ``clean()`` passes the target, topics, filter, batch size, byte cap, payload, format and
    cursor to :func:`subscriptions.validate` with the subscription's owner (the form's owner
    when it edits one, i.e. on the add form), so the admin accepts what a PUT accepts: no local
    receiver target (:data:`~pubsubpull.models.LOCAL_PREFIX`), no private or metadata
    address, only topics the owner may view.
    A new subscription also counts against the owner's ``PUBSUBPULL["MAX_SUBSCRIPTIONS"]``
    (:func:`subscriptions.check_room`, whose advisory lock lasts until the admin's
    transaction commits the subscription).
    """

    class Meta:
        model = Subscription
        fields = [
            *("owner", "name", "target", "topics", "filter", "batch_size", "max_bytes"),
            *("payload", "format", "status", "cursor"),
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "owner" in self.fields:  # the model allows none for local subscribers, made in code
            self.fields["owner"].required = True
            self.fields["owner"].help_text = "it reads only what the owner may view"

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        owner = cleaned.get("owner") if "owner" in self.fields else self.instance.owner
        sent = {field: cleaned[field] for field in VALIDATED_FIELDS if field in cleaned}
        if self.instance.broker_target and cleaned.get("target") == self.instance.target:
            # a broker target as shown (password masked): it stays as stored
            del sent["target"]
        if "topics" in sent:
            if owner is None:  # no valid owner chosen: its field says so
                del sent["topics"]
            elif sent["topics"] is None:  # an empty box: all topics, as when a PUT omits them
                sent["topics"] = []
        try:
            values = subscriptions.validate(owner, sent)
        except subscriptions.Invalid as invalid:
            for field, messages in invalid.errors.items():
                if field in sent:
                    self.add_error(field, messages)
                elif field not in VALIDATED_FIELDS:
                    self.add_error(None, [f"{field}: {message}" for message in messages])
                # else a field not sent: read-only (a receiver's target) or already refused
        else:
            if "broker_target" in values:  # not a form field: the full URL, encrypted
                self.instance.broker_target = values.pop("broker_target")
            cleaned.update(values)  # normalised as the API stores them
        if self.instance._state.adding and owner is not None:
            self._check_room(owner)
        return cleaned

    def _check_room(self, owner: Any) -> None:
        try:
            subscriptions.check_room(owner)
        except subscriptions.Invalid as invalid:
            for field, messages in invalid.errors.items():
                self.add_error(field if field in self.fields else None, messages)

    def validate_unique(self) -> None:
        super().validate_unique()
        if "owner" not in self.fields and "name" in self.fields:
            # Django skips the (owner, name) constraint when the owner is not a form field.
            exclude = {field.name for field in Subscription._meta.fields} - {"owner", "name"}
            try:
                self.instance.validate_constraints(exclude=exclude)
            except ValidationError as error:
                self.add_error(None, error)


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Subscriptions with their lag and last error; the secret is never shown.

    Edits follow the API's rules (:class:`SubscriptionForm`). The owner is chosen once, on
    the add form: delivery reads with its permissions, so it is read-only afterwards, and
    staff who are not superusers may only make subscriptions they own. A local subscriber's
    target, topics and filter come from its code; only its status, cursor and batch size
    are edited here.
    """

    form = SubscriptionForm
    list_display = ["name", "owner", "target", "status", "lag", "failures", "last_error"]
    list_filter = ["status"]
    search_fields = ["name", "target", "owner__username"]
    fields = [
        "owner",
        "name",
        "target",
        "topics",
        "filter",
        "batch_size",
        "max_bytes",
        "payload",
        "format",
        "header_names",
        "status",
        "cursor",
        "lag",
        "failures",
        "last_error",
        "next_attempt",
        "last_delivered",
        "created",
        "updated",
    ]
    readonly_fields = [
        "header_names",
        "lag",
        "failures",
        "last_error",
        "next_attempt",
        "last_delivered",
        "created",
        "updated",
    ]
    actions = ["pause", "resume", "replay_from_start"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Subscription]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(owner=request.user.pk)  # no receivers (owner NULL) either

    def _may_touch(self, request: HttpRequest, obj: Subscription | None) -> bool:
        """Whether the user may see or act on ``obj`` (any subscription when None)."""
        return obj is None or request.user.is_superuser or obj.owner_id == request.user.pk

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) and self._may_touch(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._may_touch(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._may_touch(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        readonly = list(super().get_readonly_fields(request, obj))
        if obj is None:
            return readonly
        if obj.owner_id is None:  # a local subscriber
            return [*RECEIVER_FIELDS, *readonly]
        return ["owner", *readonly]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"owner": request.user.pk, **super().get_changeform_initial_data(request)}

    def formfield_for_foreignkey(
        self, db_field: ForeignKey[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.ModelChoiceField[Any] | None:
        if db_field.name == "owner" and not request.user.is_superuser:
            # Delivery reads with the owner's permissions: lend no one else's.
            kwargs["queryset"] = get_user_model()._default_manager.filter(pk__in=[request.user.pk])
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        # Compared with the stored values, not form.changed_data: topics (a callable default)
        # is judged against a hidden initial value the browser sends back.
        edited = [field for field in TERMS_FIELDS if field in form.fields]  # not read-only
        if change and any(form.initial[field] != getattr(obj, field) for field in edited):
            obj.drop_batch()  # the batch in flight no longer applies
        if "status" in form.changed_data and obj.status == Subscription.Status.ACTIVE:
            obj.clear_failures()  # resumed
        super().save_model(request, obj, form, change)

    @admin.display(description="headers")
    def header_names(self, subscription: Subscription) -> str:
        # Names only: the values are credentials, encrypted at rest (set them by PUT).
        return ", ".join(sorted(subscription.headers)) or "-"

    @admin.display(description="lag")
    def lag(self, subscription: Subscription) -> int | None:
        return subscriptions.lag(subscription)

    @admin.action(description="Pause the selected subscriptions")
    def pause(self, request: HttpRequest, queryset: SubscriptionQuerySet) -> None:
        queryset.pause()

    @admin.action(description="Resume the selected subscriptions (clears failures)")
    def resume(self, request: HttpRequest, queryset: SubscriptionQuerySet) -> None:
        queryset.resume()

    @admin.action(description="Replay the selected subscriptions from the start of the log")
    def replay_from_start(self, request: HttpRequest, queryset: SubscriptionQuerySet) -> None:
        queryset.replay(START)
        self.message_user(request, "To replay from a position, edit the subscription's cursor.")


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    """Delivery attempts; staff who are not superusers see their own subscriptions' only."""

    list_display = ["created", "subscription", "count", "first", "last", "status_code", "error"]
    list_filter = ["status_code"]
    list_select_related = ["subscription"]
    date_hierarchy = "created"
    show_full_result_count = False

    def get_list_filter(self, request: HttpRequest) -> Any:
        # the subscription filter lists every subscription's name: superusers only
        return ["status_code", "subscription"] if request.user.is_superuser else ["status_code"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        deliveries = super().get_queryset(request)
        if request.user.is_superuser:
            return deliveries
        return deliveries.filter(subscription__owner=request.user.pk)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_view_permission(request, obj)
        if obj is None or request.user.is_superuser:
            return allowed
        return allowed and obj.subscription.owner_id == request.user.pk
