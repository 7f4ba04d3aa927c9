"""Admin: the change log, requests and delivery attempts, read-only, newest first and fast
on a log of millions (no full count, filters from the registry); subscriptions, edited by
the API's rules, with their recent delivery attempts."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import ForeignKey, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from . import delivery, diffs, events, metrics, registry, subscriptions, topics
from .models import Change, Delivery, Request, Subscription, SubscriptionQuerySet
from .positions import START, Position


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _headers(headers: Any) -> str:
    """Headers one per line, ``Name: value``, as they travel (escaped when shown)."""
    if not isinstance(headers, dict):
        return ""
    return format_html(
        '<pre style="white-space: pre-wrap">{}</pre>',
        "\n".join(f"{name}: {value}" for name, value in headers.items()),
    )


#: Rows a change list counts at most: beyond, its pages stop (filters narrow the list).
COUNT_CAP = 10_000
#: Subscriptions one ping action pings at most (each waits for its target, in the request).
PING_LIMIT = 20


class CappedPaginator(Paginator):  # type: ignore[type-arg]
    """A paginator that counts at most :data:`COUNT_CAP` rows.

    ``count`` is one ``SELECT count(*)`` over the first ``COUNT_CAP + 1`` rows of the
    ordered list (an index scan that stops there), never over the whole log; ``capped``
    says whether there are more than it shows.
    """

    cap = COUNT_CAP

    @cached_property
    def _counted(self) -> int:
        rows: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        return rows[: self.cap + 1].count()

    @cached_property
    def count(self) -> int:
        return min(self._counted, self.cap)

    @property
    def capped(self) -> bool:
        """Whether the list holds more rows than :attr:`count` (and its pages) show."""
        return self._counted > self.cap


class LargeListAdmin(ReadOnlyAdmin):
    """A read-only list of a table that grows without bound (the log, its requests):
    counted up to :data:`COUNT_CAP` only, and the title says when it stopped counting."""

    paginator = CappedPaginator
    show_full_result_count = False  # the "N total" link would count every row
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice, each over the table

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)  # not on a redirect
        changelist = context.get("cl") if context else None
        if context is not None and changelist is not None and changelist.paginator.capped:
            shown, noun = changelist.paginator.count, changelist.opts.verbose_name_plural
            context["subtitle"] = (
                f"Only the newest {shown:,} {noun} are paged: filter to reach older ones"
            )
        return response


class _KnownValuesFilter(admin.SimpleListFilter):
    """Rows whose ``parameter_name`` field equals the value chosen among :meth:`values`: a
    list known without reading the table (its distinct values would scan all of it)."""

    def values(self) -> list[str]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value) for value in self.values()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{str(self.parameter_name): value}) if value else queryset


class ModelFilter(_KnownValuesFilter):
    """The change log by model: the tracked models and declared event labels."""

    title = "model"
    parameter_name = "model"

    def values(self) -> list[str]:
        return sorted({t.label for t in registry.tracked()} | set(events.labels()))


class OpFilter(_KnownValuesFilter):
    """The change log by operation: the row operations (custom events' names are free)."""

    title = "op"
    parameter_name = "op"

    def values(self) -> list[str]:
        return list(topics.OPS)


class RequestFilter(admin.SimpleListFilter):
    """The changes of one request (``?request=<id>``, the request page's link); shown only
    while one is chosen: listing every request would read the whole table."""

    title = "request"
    parameter_name = "request"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        if not value:
            return []  # no choice: the filter is hidden
        chosen = Request.objects.filter(pk=value).first() if _is_uuid(value) else None
        return [(value, value if chosen is None else str(chosen))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        if not _is_uuid(value):
            raise IncorrectLookupParameters(f"request={value!r} is not a request id")
        return queryset.filter(request_id=value)


def _is_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def changes_url(**query: str) -> str:
    """The change list's URL with these query parameters."""
    url = reverse("admin:pubsubpull_change_changelist")
    return f"{url}?{urlencode(query)}" if query else url


@admin.register(Change)
class ChangeAdmin(LargeListAdmin):
    """The change log, newest first; a change's page shows it as a diff."""

    list_display = ["id", "topic", "object_pk", "request", "created"]
    list_filter = [ModelFilter, OpFilter, RequestFilter, ("created", admin.DateFieldListFilter)]
    search_fields = ["=object_pk"]
    list_select_related = ["request"]
    ordering = ["-id"]  # the primary key's index, read backwards
    sortable_by = ["id"]  # sorting by another column would sort the whole log
    fields = readonly_fields = (
        "id",
        "position",
        "topic",
        "model",
        "table",
        "op",
        "object_pk",
        "diff",
        "request",
        "context_json",
        "created",
    )

    class Media:
        css = {"all": ["pubsubpull/admin.css"]}

    @admin.display(description="position")
    def position(self, change: Change) -> str:
        return str(Position(change.txid, change.id))

    @admin.display(description="diff")
    def diff(self, change: Change) -> str:
        rows = format_html_join(
            "\n",
            '<tr class="{}"><th scope="row">{}</th><td><pre>{}</pre></td>'
            "<td><pre>{}</pre></td></tr>",
            (
                (
                    "pubsubpull-changed" if field.changed else "",
                    field.name,
                    diffs.pretty(field.old),
                    diffs.pretty(field.new),
                )
                for field in diffs.field_diffs(change)
            ),
        )
        return format_html(
            '<table class="pubsubpull-diff"><thead><tr><th scope="col">field</th>'
            '<th scope="col">old</th><th scope="col">new</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="context")
    def context_json(self, change: Change) -> str:
        if change.context is None:
            return "-"
        return format_html("<pre>{}</pre>", diffs.pretty(change.context))


class MethodFilter(_KnownValuesFilter):
    """Requests by HTTP method."""

    title = "method"
    parameter_name = "method"

    def values(self) -> list[str]:
        return ["POST", "PUT", "PATCH", "DELETE", "GET"]


class StatusFilter(admin.SimpleListFilter):
    """Requests by status class (2xx ... 5xx), and those still running or that raised."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(f"{n}xx", f"{n}xx") for n in range(2, 6)] + [("none", "none")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "none":
            return queryset.filter(status__isnull=True)
        if value in {f"{n}xx" for n in range(2, 6)}:
            low = int(value[0]) * 100
            return queryset.filter(status__gte=low, status__lt=low + 100)
        return queryset


@admin.register(Request)
class RequestAdmin(LargeListAdmin):
    """Requests that changed tracked rows, newest first; a request's page links its changes."""

    list_display = ["started", "method", "path", "username", "status", "duration"]
    list_filter = [MethodFilter, StatusFilter, ("started", admin.DateFieldListFilter)]
    search_fields = ["path", "username"]
    sortable_by = ["started"]  # its index; another column would sort the whole table
    fields = readonly_fields = (
        "id",
        "user",
        "username",
        "method",
        "path",
        "started",
        "duration",
        "status",
        "changes",
    )

    @admin.display(description="changes")
    def changes(self, obj: Request) -> str:
        counted = obj.changes.all()[: COUNT_CAP + 1].count()
        shown = f"{COUNT_CAP:,}+" if counted > COUNT_CAP else f"{counted:,}"
        noun = "change" if counted == 1 else "changes"
        return format_html('<a href="{}">{} {}</a>', changes_url(request=str(obj.pk)), shown, noun)


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


#: Delivery attempts a subscription's page lists, newest first.
RECENT_ATTEMPTS = 20


def _wake_after_commit(subscription_ids: list[int]) -> None:
    """Queue these subscriptions' deliveries once the change commits: a wake-up's dispatch
    only sees new changes, not what a resume or a replay makes due (``tasks.wake``)."""
    from .tasks import wake_on_commit  # not at import: the admin loads before Procrastinate

    wake_on_commit(subscription_ids)


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

    class Media:
        css = {"all": ["pubsubpull/admin.css"]}

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
        "down_since",
        "created",
        "updated",
        "recent_attempts",
    ]
    readonly_fields = [
        "header_names",
        "lag",
        "failures",
        "last_error",
        "next_attempt",
        "last_delivered",
        "down_since",
        "created",
        "updated",
        "recent_attempts",
    ]
    list_select_related = ["owner"]
    actions = ["pause", "resume", "replay_from_start", "ping"]

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
        _wake_after_commit([obj.pk])

    @admin.display(description="headers")
    def header_names(self, subscription: Subscription) -> str:
        # Names only: the values are credentials, encrypted at rest (set them by PUT).
        return ", ".join(sorted(subscription.headers)) or "-"

    @admin.display(description="lag")
    def lag(self, subscription: Subscription) -> int | None:
        return subscriptions.lag(subscription)

    @admin.display(description=f"last {RECENT_ATTEMPTS} attempts")
    def recent_attempts(self, subscription: Subscription) -> str:
        if subscription.pk is None:
            return "-"
        attempts = list(subscription.deliveries.order_by("-created", "-id")[:RECENT_ATTEMPTS])
        if not attempts:
            return "none yet"
        rows = format_html_join(
            "\n",
            '<tr class="{}"><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td>'
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    "" if attempt.ok else "pubsubpull-failed",
                    reverse("admin:pubsubpull_delivery_change", args=[attempt.pk]),
                    attempt.created.isoformat(sep=" ", timespec="seconds"),
                    attempt.count,
                    attempt.first,
                    attempt.last,
                    "-" if attempt.status_code is None else attempt.status_code,
                    f"{attempt.duration.total_seconds():.3f} s",
                    attempt.error or "",
                )
                for attempt in attempts
            ),
        )
        every = reverse("admin:pubsubpull_delivery_changelist")
        return format_html(
            '<table class="pubsubpull-attempts"><thead><tr><th scope="col">time</th>'
            '<th scope="col">changes</th><th scope="col">first</th><th scope="col">last</th>'
            '<th scope="col">status</th><th scope="col">duration</th><th scope="col">error</th>'
            '</tr></thead><tbody>{}</tbody></table><p><a href="{}?{}">all attempts</a></p>',
            rows,
            every,
            urlencode({"subscription__id__exact": subscription.pk}),
        )

    @admin.action(description="Pause the selected subscriptions")
    def pause(self, request: HttpRequest, queryset: SubscriptionQuerySet) -> None:
        self.message_user(request, f"Paused {_subscriptions(queryset.pause())}.")

    @admin.action(description="Resume the selected subscriptions (clears failures)")
    def resume(self, request: HttpRequest, queryset: SubscriptionQuerySet) -> None:
        _wake_after_commit(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Resumed {_subscriptions(queryset.resume())}.")

    @admin.action(description="Replay the selected subscriptions from the start of the log")
    def replay_from_start(self, request: HttpRequest, queryset: SubscriptionQuerySet) -> None:
        _wake_after_commit(list(queryset.values_list("pk", flat=True)))
        queryset.replay(START)
        self.message_user(request, "To replay from a position, edit the subscription's cursor.")

    @admin.action(description="Ping the selected subscriptions' targets now")
    def ping(self, request: HttpRequest, queryset: SubscriptionQuerySet) -> None:
        for subscription in queryset.select_related("owner")[:PING_LIMIT]:
            try:
                attempt = delivery.ping(subscription)
            except delivery.NotPingable as error:
                self.message_user(request, f"{subscription}: {error}", messages.WARNING)
                continue
            answer = attempt.status_code or "no answer"
            said = f"{metrics.subscription_label(subscription)}: {answer} in "
            said += f"{attempt.duration.total_seconds():.3f} s"
            if attempt.ok:
                self.message_user(request, f"Ping {said}")
            else:
                self.message_user(request, f"Ping {said}: {attempt.error}", messages.ERROR)


def _subscriptions(count: int) -> str:
    return f"{count} subscription" if count == 1 else f"{count} subscriptions"


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    """Delivery attempts, each with what was sent and what came back (the attempt log);
    staff who are not superusers see their own subscriptions' only."""

    list_display = ["created", "subscription", "count", "first", "last", "status_code", "error"]
    list_filter = ["status_code"]
    list_select_related = ["subscription"]
    date_hierarchy = "created"
    show_full_result_count = False
    fields = readonly_fields = (
        "subscription",
        "batch_id",
        "first",
        "last",
        "count",
        "sent",
        "answered",
        "duration",
        "status_code",
        "error",
        "sent_headers",
        "answer_headers",
        "response_body",
        "created",
    )

    @admin.display(description="request headers")
    def sent_headers(self, delivery: Delivery) -> str:
        return _headers(delivery.request_headers)

    @admin.display(description="response headers")
    def answer_headers(self, delivery: Delivery) -> str:
        return _headers(delivery.response_headers)

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
