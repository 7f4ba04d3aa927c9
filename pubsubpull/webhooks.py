"""Standard Webhooks signatures: :func:`sign` for the sender, :func:`verify` and
:class:`ReceiverView` for the subscribing service.

The cryptography is the ``standardwebhooks`` package's; this module only adapts it to
deliveries (the three ``webhook-*`` headers, Django requests, clear errors) and adds the
receiver's duplicate check on ``webhook-id``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from standardwebhooks.webhooks import (
    EmptyWebhookSecretError,
    Webhook,
    WebhookVerificationError,
)

__all__ = [
    "HEADERS",
    "SECRET_PREFIX",
    "TOLERANCE",
    "InvalidPayload",
    "InvalidSecret",
    "MIN_SECRET_BYTES",
    "check_secret",
    "InvalidSignature",
    "ReceiverView",
    "generate_secret",
    "sign",
    "verify",
]

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
#: The headers a delivery carries, in the order Standard Webhooks lists them.
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
#: How far ``webhook-timestamp`` may be from the receiver's clock, either way. Fixed by
#: ``standardwebhooks.Webhook.verify``; stated here for the receiver's duplicate window.
TOLERANCE = timedelta(minutes=5)
PING_TOPIC = "pubsubpull.ping"  # delivery.PING: answered without calling handle


class InvalidSecret(ValueError):
    """A webhook secret that cannot be used: empty, or not base64 after ``whsec_``."""


class InvalidSignature(Exception):
    """The request is not a delivery signed with the secret (the reason is the message)."""


class InvalidPayload(ValueError):
    """The signature is right but the body is not UTF-8 JSON."""


def generate_secret() -> str:
    """A new random secret: ``whsec_`` followed by base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


MIN_SECRET_BYTES = 24  # the Standard Webhooks spec asks for 24 to 64 random bytes


def check_secret(secret: str) -> str:
    """``secret`` if a subscription may use it, else :class:`InvalidSecret` saying why:
    it must decode and hold at least :data:`MIN_SECRET_BYTES` bytes."""
    _webhook(secret)
    text = secret.removeprefix(SECRET_PREFIX)
    size = len(base64.b64decode(text + "=" * (-len(text) % 4)))
    if size < MIN_SECRET_BYTES:
        raise InvalidSecret(
            f"webhook secret has {size} bytes, fewer than {MIN_SECRET_BYTES}: "
            "use pubsubpull.webhooks.generate_secret() (32 random bytes)"
        )
    return secret


def _webhook(secret: str) -> Webhook:
    # standardwebhooks decodes leniently (stray characters are dropped), so a mistyped
    # secret would only show up as "no matching signature": check strictly first.
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise InvalidSecret(
            f"webhook secret is not base64 after {SECRET_PREFIX!r}: "
            "use the subscription's secret as given, or pubsubpull.webhooks.generate_secret()"
        ) from exc
    try:
        return Webhook(key)
    except EmptyWebhookSecretError as exc:
        raise InvalidSecret(
            "webhook secret is empty: use pubsubpull.webhooks.generate_secret()"
        ) from exc


def _secrets(secret: str | Sequence[str]) -> list[str]:
    """One secret, or several (a rotation), as a non-empty list."""
    keys = [secret] if isinstance(secret, str) else list(secret)
    if not keys:
        raise InvalidSecret("no webhook secret given: pass one, or a list of them")
    return keys


def sign(
    secret: str | Sequence[str],
    message_id: str,
    body: bytes | str,
    timestamp: datetime | None = None,
) -> dict[str, str]:
    """The Standard Webhooks headers for sending ``body`` as message ``message_id``.

    Returns ``{"webhook-id", "webhook-timestamp", "webhook-signature"}``. Keep
    ``message_id`` the same across retries of one batch (receivers dedupe on it); the
    timestamp (default: now, whole seconds) is signed too, so each attempt is signed
    anew. ``body`` must be the exact bytes sent, UTF-8 encoded. With a list of secrets
    (during a rotation: the new one first) the signature holds one ``v1,<base64>`` per
    secret, separated by spaces, as the Standard Webhooks spec allows; a receiver with
    any one of them verifies it.
    """
    if not message_id or any(c.isspace() for c in message_id):
        raise ValueError(f"message id {message_id!r} must be non-empty and without whitespace")
    if timestamp is None:
        timestamp = datetime.now(UTC)
    elif timestamp.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware: use django.utils.timezone.now()")
    seconds = math.floor(timestamp.timestamp())
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    signed_at = datetime.fromtimestamp(seconds, UTC)
    signature = " ".join(
        _webhook(key).sign(message_id, signed_at, text) for key in _secrets(secret)
    )
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": signature,
    }


def verify(request: HttpRequest, secret: str | Sequence[str]) -> Any:
    """Check a delivery's signature and timestamp; return its parsed JSON body.

    ``secret`` may be a list: the delivery is accepted when it is signed with any of them
    (rotating a receiver's secret: list the new and the old one until the sender has
    switched). The body of a pubsubpull delivery is ``{"subscription": name,
    "changes": [...]}``.
    Raises :class:`InvalidSignature` (missing headers, a signature that does not match,
    a timestamp more than :data:`TOLERANCE` away from now), :class:`InvalidPayload` when
    the signed body is not UTF-8 JSON, :class:`InvalidSecret` for an unusable secret, and
    Django's ``RequestDataTooBig`` for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``.
    """
    webhooks = [_webhook(key) for key in _secrets(secret)]
    headers = {name: request.headers.get(name, "") for name in HEADERS}
    missing = [name for name, value in headers.items() if not value]
    if missing:
        raise InvalidSignature(f"missing headers: {', '.join(missing)}")
    try:
        # JSON is UTF-8 (RFC 8259), and standardwebhooks signs text.
        text = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"body is not UTF-8: {exc}") from exc
    for webhook in webhooks:
        try:
            webhook.verify(text, headers, json_parse=False)
            break
        except WebhookVerificationError as exc:
            failure = exc  # the timestamp, or no signature of this secret: try the next
        except ValueError as exc:  # the library's parsing of a malformed signature header
            raise InvalidSignature(
                "malformed webhook-signature header: expected 'v1,<base64>'"
            ) from exc
    else:
        reason = str(failure)
        if "timestamp too" in reason:
            reason += (
                f" (more than {TOLERANCE} from this server's clock): "
                "check both clocks, or this is a replayed message"
            )
        raise InvalidSignature(reason) from failure
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidPayload(f"body is not JSON: {exc}") from exc


def _changes(payload: Any) -> list[dict[str, Any]] | None:
    """The changes of a delivery's body: a batch's, or the one change of a message in the
    standard format; None when it is neither."""
    if not isinstance(payload, dict):
        return None
    if "changes" in payload:
        changes = payload["changes"]
    elif {"type", "timestamp", "data"} <= payload.keys():
        changes = [payload["data"]]
    else:
        return None
    if isinstance(changes, list) and all(isinstance(c, dict) for c in changes):
        return changes
    return None


def _error(status: int, error: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": error, "detail": detail}, status=status)


@method_decorator(csrf_exempt, name="dispatch")
class ReceiverView(View):
    """A ready endpoint for the subscribing service: verify, dedupe, then :meth:`handle`.

    Subclass it, set :attr:`secret` (or override :meth:`get_secret`; a list of secrets
    accepts deliveries signed with any of them, for a rotation) and implement
    ``handle(self, changes, payload)``; ``self.request`` is the request::

        class OrderChanges(ReceiverView):
            secret = settings.SHOP_WEBHOOK_SECRET

            def handle(self, changes, payload):
                for change in changes:
                    ...

    Deliveries are HTTP PUT (POST in the standard format; either is accepted); CSRF does
    not apply. Answers:

    - 204 when ``handle`` returned, and for a ``webhook-id`` already handled
      (``handle`` is not called again);
    - 401 ``{"error": "invalid_signature", "detail": ...}`` for a missing or wrong
      signature or a timestamp outside :data:`TOLERANCE`;
    - 400 ``{"error": "invalid_payload", ...}`` for a signed body that is not a delivery;
      413 for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (raise it, or lower the
      subscription's ``batch_size``);
    - 503 ``{"error": "handler_failed", ...}`` when ``handle`` raised (logged with its
      traceback on this module's logger), so the sender retries the batch; and
      503 ``{"error": "in_progress", ...}`` while the same message is being handled by
      another request.

    Acknowledge fast: the sender gives up on an attempt after its ``DELIVERY_TIMEOUT``
    (10 s by default; the Standard Webhooks guidance suggests 15-30 s) and sends the batch
    again. Keep ``handle`` short: store the changes, or defer a job (Procrastinate, Celery)
    that does the slow work, and return; raise only when storing failed::

        def handle(self, changes, payload):
            for change in changes:
                apply_change.defer(change=change)  # the job does the slow part

    A ``pubsubpull.ping`` event (``manage.py pubsubpull ping``, ``POST .../ping/``) is
    verified and answered 204 without calling ``handle``.

    A message id counts as handled only once ``handle`` has returned, so a failed batch
    is handled again on retry. Handled ids are kept in ``caches[cache_alias]`` for
    :attr:`dedupe_timeout`; use a cache shared by all processes (not LocMem) when the
    receiver runs more than one.
    """

    http_method_names = ["put", "post"]

    #: The subscription's secret (``whsec_...``), or a list of them (any one verifies: while
    #: rotating, the new and the old); or override :meth:`get_secret`.
    secret: str | Sequence[str] = ""
    #: The cache (alias in ``CACHES``) remembering handled message ids.
    cache_alias: str = "default"
    #: Seconds a handled id is remembered. A signed message verifies while the clock is
    #: within TOLERANCE of its timestamp either side, so a replay can come up to twice
    #: the tolerance after the first copy; a minute more covers clock steps.
    dedupe_timeout: int = int((2 * TOLERANCE).total_seconds()) + 60
    #: Seconds a message being handled blocks copies of itself (longest expected handle).
    lock_timeout: int = 60

    def get_secret(self, request: HttpRequest) -> str | Sequence[str]:
        """The secret (or secrets) to check ``request`` with: :attr:`secret` unless
        overridden."""
        if not self.secret:
            raise ImproperlyConfigured(
                f"{type(self).__name__} has no secret: set its `secret` attribute to the "
                "subscription's secret, or override get_secret(request)"
            )
        return self.secret

    def get_cache_key(self, message_id: str) -> str:
        """The cache key remembering ``message_id`` (hashed: any id makes a valid key)."""
        return "pubsubpull:webhook:" + hashlib.sha256(message_id.encode()).hexdigest()

    def handle(self, changes: list[dict[str, Any]], payload: dict[str, Any]) -> None:
        """Process one delivered batch; raise to have it retried. Subclasses implement it.

        ``changes`` is ``payload["changes"]``, in position order; ``payload`` is the whole
        body (``payload["subscription"]`` names the subscription). A subscription in the
        standard format delivers one change per message: ``changes`` is then
        ``[payload["data"]]``, and ``payload`` is ``{"type", "timestamp", "data"}``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement handle(changes, payload)")

    def put(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Receive a delivery (see the class documentation for the answers)."""
        try:
            payload = verify(request, self.get_secret(request))
        except InvalidSignature as exc:
            # Standard Webhooks, "Verifying signatures": compare in constant time and check
            # that webhook-timestamp is "within some allowable tolerance of the current
            # timestamp to prevent replay attacks" (TOLERANCE, 5 minutes either side). Its
            # "Delivery success and failure" makes any non-2xx a failure the sender retries,
            # and 410 Gone a request to stop sending: so 401, never 410 (a retry is signed
            # afresh, with a new timestamp), and nothing is handled.
            return _error(401, "invalid_signature", str(exc))
        except InvalidPayload as exc:
            return _error(400, "invalid_payload", str(exc))
        except RequestDataTooBig as exc:
            return _error(413, "payload_too_large", str(exc))
        changes = _changes(payload)
        if changes is None:
            return _error(
                400,
                "invalid_payload",
                'expected {"subscription": name, "changes": [change, ...]}, or the standard '
                'format\'s {"type": topic, "timestamp": time, "data": change}',
            )

        if changes and all(change.get("topic") == PING_TOPIC for change in changes):
            return HttpResponse(status=204)  # a ping (manage.py pubsubpull ping): verified
        message_id = request.headers["webhook-id"]
        cache = caches[self.cache_alias]
        key = self.get_cache_key(message_id)
        # An atomic add both claims the message and detects copies of it.
        if not cache.add(key, "handling", timeout=self.lock_timeout):
            if cache.get(key) == "handled":
                return HttpResponse(status=204)  # handled before: at-least-once made once
            response = _error(503, "in_progress", "this message is being handled; retry")
            response["Retry-After"] = "5"
            return response
        try:
            self.handle(changes, payload)
        except Exception:
            cache.delete(key)
            logger.exception("webhook %s: handle() failed; the sender will retry", message_id)
            return _error(503, "handler_failed", "the changes were not handled; retry later")
        cache.set(key, "handled", timeout=self.dedupe_timeout)
        return HttpResponse(status=204)

    post = put
