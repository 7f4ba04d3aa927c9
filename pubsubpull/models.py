"""pubsubpull's tables: the change log (:class:`Change`) and the requests that caused changes
(:class:`Request`), API tokens (:class:`Token`), subscriptions (:class:`Subscription`) and
their delivery attempts (:class:`Delivery`). The mirror's are in ``pubsubpull.mirror``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Now

from .fields import TransactionIdField
from .positions import InvalidPosition, Position

if TYPE_CHECKING:
    from .delivery import Batch


def validate_position(value: str) -> None:
    """Model field validator: a position string such as a change's ``id``."""
    try:
        Position.parse(value)
    except InvalidPosition as error:
        raise ValidationError(str(error)) from None


class ImmutableError(Exception):
    """Raised when code tries to change or delete a recorded change or request."""


class _Immutable(models.Model):
    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableError(
                f"{type(self).__name__} rows are immutable: they record what happened. "
                "Use manage.py pubsubpull prune to remove old ones."
            )
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableError(
            f"{type(self).__name__} rows are immutable: use manage.py pubsubpull prune "
            "to remove old ones."
        )


class Request(_Immutable):
    """An HTTP request that changed at least one tracked row.

    Created by the capture trigger the first time the request writes a tracked row
    (never for requests that change nothing), completed with ``status`` and
    ``duration`` by :class:`pubsubpull.middleware.RequestMiddleware`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,  # the user may be deleted; the audit trail keeps the username
    )
    username = models.CharField(max_length=150, blank=True, default="")
    method = models.CharField(max_length=16)
    path = models.TextField()
    started = models.DateTimeField(db_index=True)
    duration = models.DurationField(null=True, blank=True)
    status = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-started"]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.status or '...'})"


class Change(_Immutable):
    """One recorded change of a tracked row (or a published custom event)."""

    id = models.BigAutoField(primary_key=True)
    txid = TransactionIdField(
        db_default=models.Func(function="pg_current_xact_id", output_field=TransactionIdField()),
        editable=False,
    )
    topic = models.CharField(max_length=255)
    model = models.CharField(max_length=255, help_text="app_label.model_name")
    table = models.CharField(max_length=63, blank=True, default="")
    op = models.CharField(max_length=16)
    # "pk" is reserved by Django; the column is named pk, as in the change JSON.
    object_pk = models.TextField(null=True, blank=True, db_column="pk")  # noqa: DJ001 - truncate has none
    old = models.JSONField(null=True, blank=True)
    new = models.JSONField(null=True, blank=True)
    # No constraint: the capture writes the Request row itself (pubsubpull_save_request),
    # and a constraint costs every tracked write a deferred check at commit. Indexed only
    # where set (Meta), so changes made outside a request (jobs, bulk loads) add no entry.
    request = models.ForeignKey(
        Request,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="changes",
        db_constraint=False,
        db_index=False,
    )
    context = models.JSONField(null=True, blank=True)
    created = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        ordering = ["txid", "id"]
        indexes = [
            models.Index(fields=["txid", "id"], name="pubsubpull_change_position"),
            # The admin: a model's changes newest first (the model filter). Its date filter
            # has a BRIN index on created, made by migration 0013 in SQL only.
            models.Index(fields=["model", "id"], name="pubsubpull_change_model"),
            # A request's changes (the admin, prune): changes outside a request have none.
            models.Index(
                fields=["request"],
                name="pubsubpull_change_request",
                condition=models.Q(request__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.object_pk or ''}".strip()

    @property
    def fields(self) -> list[str]:
        """Names of the columns an update changed (derived from ``old`` and ``new``)."""
        if self.op != "update" or not isinstance(self.old, dict) or not isinstance(self.new, dict):
            return []
        keys = self.old.keys() | self.new.keys()
        return sorted(k for k in keys if self.old.get(k) != self.new.get(k))


class Token(models.Model):
    """An API token for the pull and subscription endpoints, stored as a SHA-256 hash.

    Create one with ``manage.py pubsubpull token <username>``: the token is printed
    once and cannot be read back.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="pubsubpull_tokens"
    )
    name = models.CharField(max_length=100, blank=True, default="")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="to recognise a token")
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


#: A subscription target naming a local subscriber: ``python:<dotted.path>``.
LOCAL_PREFIX = "python:"
#: A subscription's batch size when none is given.
DEFAULT_BATCH_SIZE = 100
# The batch in flight, dropped: the next batch is read afresh from the cursor.
_NO_BATCH: dict[str, Any] = {"batch_id": "", "batch_end": ""}
# No failed attempt counted, none scheduled: the next attempt is due now.
_NO_FAILURES: dict[str, Any] = {"failures": 0, "next_attempt": None, "last_error": ""}


def _delivered(position: Position, at: datetime, then: Batch | None) -> dict[str, Any]:
    """The fields of a subscription whose batch up to ``position`` was delivered ``at``,
    with ``then`` (or nothing) in flight next."""
    flight = _NO_BATCH if then is None else {"batch_id": then.id, "batch_end": str(then.last)}
    return {"cursor": str(position), "last_delivered": at, **flight, **_NO_FAILURES}


class SubscriptionQuerySet(models.QuerySet["Subscription"]):
    """Subscriptions, with the updates that keep their delivery state consistent.

    Each is one ``UPDATE`` of the rows selected, so a caller keeps its conditions (e.g.
    ``filter(pk=..., batch_id=...)``: only while that batch is still in flight). Each
    returns the number of rows updated.
    """

    def pause(self) -> int:
        """Stop delivering until resumed; the cursor and the batch in flight stay."""
        return self.update(status=Subscription.Status.PAUSED)

    def resume(self) -> int:
        """Deliver again, at once: failures, the retry time and the last error cleared."""
        return self.update(status=Subscription.Status.ACTIVE, **_NO_FAILURES)

    def replay(self, position: Position) -> int:
        """Deliver the changes after ``position``: the batch in flight is dropped."""
        return self.update(cursor=str(position), **_NO_BATCH)

    def drop_batch(self) -> int:
        """Forget the batch in flight: the next batch is read afresh from the cursor."""
        return self.update(**_NO_BATCH)

    def set_terms(self, **terms: Any) -> int:
        """Change the target, topics or filter: the batch in flight, read under the old
        terms, is dropped, and ``updated`` moves (as a save does: a sender that loaded the
        old terms sees it, :meth:`as_loaded`)."""
        return self.update(**terms, **_NO_BATCH, updated=Now())

    def delivered_change(self, position: Position, at: datetime) -> int:
        """One change of the batch in flight, at ``position``, was delivered ``at`` (the
        standard format sends them one by one): the cursor moves there and the failures
        are cleared; the rest of the batch stays in flight."""
        return self.update(cursor=str(position), last_delivered=at, **_NO_FAILURES)

    def delivered(self, position: Position, at: datetime, then: Batch | None = None) -> int:
        """A batch up to ``position`` was delivered ``at``: the cursor moves there, the
        failures are cleared, and the batch in flight is cleared, or is ``then`` (a
        batch read ahead)."""
        return self.update(**_delivered(position, at, then))

    def as_loaded(self, subscription: Subscription) -> SubscriptionQuerySet:
        """Only if still active and not saved since ``subscription`` was loaded (a PUT saves
        it, :meth:`set_terms` moves ``updated`` too; pause and replay change its status or
        its batch)."""
        return self.filter(status=Subscription.Status.ACTIVE, updated=subscription.updated)


class Subscription(models.Model):
    """A subscriber's standing request for changes, delivered by background jobs.

    ``target`` is an https URL (HTTP PUT of batches), a broker URL (``redis://``,
    ``nats://``, ``amqp://``: :mod:`pubsubpull.sinks`; stored in full, encrypted, in
    ``broker_target``, shown with its password masked) or ``python:<dotted.path>``
    (:data:`LOCAL_PREFIX`) for a local subscriber registered with :func:`pubsubpull.on`.

    Change its delivery state with the methods of ``Subscription.objects``
    (:class:`SubscriptionQuerySet`: ``pause()``, ``resume()``, ``replay(position)``, ...),
    or with :meth:`drop_batch` and :meth:`clear_failures` before ``save()``.
    """

    class Status(models.TextChoices):
        ACTIVE = "active"
        PAUSED = "paused"
        FAILING = "failing"  # RETRY_SCHEDULE used up: no attempts until resumed
        DISABLED = "disabled"  # the target answered 410 Gone

    class Payload(models.TextChoices):
        FULL = "full"  # each change as the pull API shows it
        THIN = "thin"  # without "old" and "new": receivers GET the row if they need it

    class Format(models.TextChoices):
        BATCH = "batch"  # PUT of {"subscription", "changes"}
        STANDARD = "standard"  # a POST per change of {"type", "timestamp", "data"}

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="pubsubpull_subscriptions",
        help_text="empty for local subscribers",
    )
    name = models.SlugField(max_length=100)
    target = models.CharField(
        max_length=2000,
        help_text=f"https URL, a broker URL (password masked), or {LOCAL_PREFIX}<dotted.path>",
    )
    # A broker target (redis://, nats://, amqp://: pubsubpull.sinks) in full, with its
    # credentials, encrypted; ``target`` shows it with the password masked.
    broker_target = models.TextField(
        blank=True, default="", editable=False, help_text="encrypted broker URL"
    )
    topics = models.JSONField(default=list, blank=True, help_text="topic patterns; [] is all")
    filter = models.TextField(blank=True, default="", help_text="SQL/JSON path on the change")
    batch_size = models.PositiveSmallIntegerField(default=DEFAULT_BATCH_SIZE)
    max_bytes = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="largest body of a batch, in bytes; empty: PUBSUBPULL['MAX_BATCH_BYTES']",
    )
    payload = models.CharField(
        max_length=10,
        choices=Payload.choices,
        default=Payload.FULL,
        help_text="thin: changes without old and new",
    )
    format = models.CharField(
        max_length=10,
        choices=Format.choices,
        default=Format.BATCH,
        help_text="standard: one POST per change with the Standard Webhooks payload",
    )
    headers = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="extra request headers: name -> encrypted value",
    )
    secret = models.TextField(blank=True, default="", editable=False, help_text="encrypted")
    # The secret a PUT replaced: it signs deliveries too until previous_secret_until, so a
    # receiver can switch to the new one without failed verifications.
    previous_secret = models.TextField(
        blank=True, default="", editable=False, help_text="encrypted"
    )
    previous_secret_until = models.DateTimeField(null=True, blank=True, editable=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    cursor = models.CharField(
        max_length=41,
        default="0-0",
        validators=[validate_position],
        help_text="last position delivered; set it to replay from there",
    )
    # The batch in flight: retried with the same id and the same changes until a 2xx.
    batch_id = models.CharField(max_length=64, blank=True, default="", editable=False)
    batch_end = models.CharField(max_length=41, blank=True, default="", editable=False)
    failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt = models.DateTimeField(null=True, blank=True)
    last_delivered = models.DateTimeField(null=True, blank=True, editable=False)
    # Set when it turns failing or disabled (operators are told), cleared by the next
    # delivered batch (they are told it recovered); resuming leaves it.
    down_since = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="when it turned failing or disabled; cleared when a batch is delivered again",
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["owner_id", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "name"], name="pubsubpull_subscription_owner_name"
            ),
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(owner__isnull=True),
                name="pubsubpull_subscription_local_name",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_local(self) -> bool:
        """Whether the target is a local subscriber (:data:`LOCAL_PREFIX`)."""
        return self.target.startswith(LOCAL_PREFIX)

    def drop_batch(self) -> None:
        """Forget the batch in flight (on this instance: ``save()`` writes it)."""
        for field, value in _NO_BATCH.items():
            setattr(self, field, value)

    def clear_failures(self) -> None:
        """Clear the failures, retry time and last error, as resuming does (on this
        instance: ``save()`` writes it)."""
        for field, value in _NO_FAILURES.items():
            setattr(self, field, value)

    def delivered(self, position: Position, at: datetime, then: Batch | None = None) -> None:
        """What ``Subscription.objects.filter(pk=...).delivered(...)`` wrote, on this
        instance."""
        for field, value in _delivered(position, at, then).items():
            setattr(self, field, value)


class Delivery(_Immutable):
    """One delivery attempt of one batch to one subscription: what was sent (headers,
    with the signature redacted) and what came back (status, headers, the first
    :data:`~pubsubpull.delivery.LOGGED_BODY_BYTES` of the body), and when."""

    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="deliveries"
    )
    batch_id = models.CharField(max_length=64)
    first = models.CharField(max_length=41, help_text="position of the first change")
    last = models.CharField(max_length=41, help_text="position of the last change")
    count = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    duration = models.DurationField()
    request_headers = models.JSONField(
        default=dict, blank=True, help_text="sent; the signature and added headers redacted"
    )
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.TextField(
        blank=True, default="", help_text="the first 4 KB of the answer, as text"
    )
    sent = models.DateTimeField(null=True, blank=True, help_text="when the attempt began")
    answered = models.DateTimeField(
        null=True, blank=True, help_text="when the answer came; empty when none did"
    )
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name_plural = "deliveries"
        indexes = [  # a subscription's recent attempts (its admin page)
            models.Index(
                fields=["subscription", "created", "id"], name="pubsubpull_delivery_recent"
            )
        ]

    def __str__(self) -> str:
        return f"{self.subscription} {self.first}..{self.last}: {self.status_code or self.error}"

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
