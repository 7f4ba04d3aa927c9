"""Pull endpoints: JSON over GET, authenticated, per-model ``view`` permission."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import conf, delivery, metrics, reads, registry, subscriptions, topics
from .auth import AuthenticationFailed, Throttled, authenticate
from .models import Subscription
from .positions import START, InvalidPosition, Position

logger = logging.getLogger(__name__)
RETRY_AFTER = 5  # seconds a caller is asked to wait while the database is away


class ApiError(Exception):
    """An error answered as JSON: ``{"error": code, "detail": ..., "parameter": ...}``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        parameter: str | None = None,
        fields: dict[str, list[str]] | None = None,
    ):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.parameter, self.fields = parameter, fields

    def response(self) -> JsonResponse:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.parameter:
            body["parameter"] = self.parameter
        if self.fields:
            body["fields"] = self.fields
        response = JsonResponse(body, status=self.status)
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="pubsubpull", Basic realm="pubsubpull"'
        return response


def _ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


def bad_parameter(parameter: str, detail: str) -> ApiError:
    return ApiError(400, "invalid_parameter", detail, parameter)


def api(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Authenticate the caller (``request.api_user``) and answer errors as JSON.

    Writes authenticated by the session cookie must pass Django's CSRF check; token and
    Basic callers send credentials a browser does not add by itself.
    """

    def answer(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            with reads.rationed() if _long_poll(request) else contextlib.nullcontext():
                user = authenticate(request)
            if (
                user is not None
                and request.method not in ("GET", "HEAD", "OPTIONS")
                and "Authorization" not in request.headers
            ):
                rejected = CsrfViewMiddleware(_ok).process_view(request, _ok, (), {})
                if rejected is not None:
                    raise ApiError(403, "csrf_failed", "CSRF check failed for a session write")
            if user is None:
                raise ApiError(
                    401,
                    "not_authenticated",
                    "authentication required: a session, HTTP Basic, or "
                    "'Authorization: Bearer <token>' (manage.py pubsubpull token <username>)",
                )
            request.api_user = user  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)
        except Throttled as error:
            response = ApiError(429, "throttled", str(error)).response()
            response["Retry-After"] = str(error.retry_after)
            return response
        except AuthenticationFailed as error:
            return ApiError(401, "not_authenticated", str(error)).response()
        except ApiError as error:
            return error.response()
        except reads.QueryFailed as error:
            # The caller's topics or filter took too long (or the database is slow).
            response = ApiError(503, "query_failed", str(error)).response()
            response["Retry-After"] = str(RETRY_AFTER)
            return response
        except (OperationalError, InterfaceError) as error:
            # The database is away (restarting, connection terminated): the caller can
            # retry; Django drops the broken connection at the end of the request.
            logger.warning("pubsubpull answered 503, database unavailable: %s", error)
            response = ApiError(
                503, "database_unavailable", "the database is unavailable; retry shortly"
            ).response()
            response["Retry-After"] = str(RETRY_AFTER)
            return response

    @csrf_exempt
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = answer(request, *args, **kwargs)
        metrics.pull_request(view.__name__, response.status_code)
        return response

    return wrapper


def _long_poll(request: HttpRequest) -> bool:
    """A request that may wait (``?wait=``): its database work is rationed (see
    :func:`reads.rationed`) from authentication on. (HTTP Basic hashes a password within
    that turn: long polls should use a token.)"""
    return request.GET.get("wait", "") not in ("", "0")


def json_page(
    results: list[str], next: str | None, prefetch: str | None = None, **fields: Any
) -> HttpResponse:
    """A ``{"results": [...], "next": ..., ...}`` body around JSON texts PostgreSQL built.

    The ``next`` page is also named in a ``Link`` header (RFC 8288), so a client can ask
    for it before it has decoded this one (:meth:`pubsubpull.client.Service.instances`),
    and so is the page after it when known (``rel="prefetch"``), which the client asks for
    meanwhile: two pages are then built at once.
    """
    fields = {"next": next, **fields}
    tail = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items())
    body = '{"results": [' + ", ".join(results) + "]" + tail + "}"
    response = HttpResponse(body, content_type="application/json")
    links = [
        f'<{url}>; rel="{rel}"' for url, rel in ((next, "next"), (prefetch, "prefetch")) if url
    ]
    if links:
        response["Link"] = ", ".join(links)
    return response


def _limit(request: HttpRequest) -> int:
    raw = request.GET.get("limit")
    maximum = conf.settings.MAX_PAGE_SIZE
    if raw is None or raw == "":
        return min(conf.settings.PAGE_SIZE, maximum)
    if not re.fullmatch(r"[0-9]{1,7}", raw) or not 1 <= int(raw) <= maximum:
        raise bad_parameter("limit", f"limit must be an integer from 1 to {maximum}")
    return int(raw)


def _url(request: HttpRequest, name: str, query: dict[str, Any], **kwargs: Any) -> str:
    path = reverse(f"pubsubpull:{name}", kwargs=kwargs or None)
    return request.build_absolute_uri(path + "?" + urlencode(query))


def _readable(request: HttpRequest, label: str) -> registry.Tracked:
    tracked = registry.get(label)
    if tracked is None:
        raise ApiError(404, "not_found", f"{label!r} is not a tracked model")
    if tracked not in reads.readable(request.api_user):  # type: ignore[attr-defined]
        raise ApiError(403, "permission_denied", f"you may not view {tracked.label}")
    return tracked


@require_GET
@api
def directory(request: HttpRequest) -> HttpResponse:
    """The tracked models this caller may read, and the other endpoints."""
    readable = reads.readable(request.api_user)  # type: ignore[attr-defined]
    estimates = reads.row_estimates(readable)
    models = [
        {
            "label": t.label,
            "url": _url(request, "instances", {}, label=t.label).rstrip("?"),
            "changes": _url(request, "changes", {"topics": f"{t.label}.*"}),
            "rows": estimates[t.label],
        }
        for t in readable
    ]
    return JsonResponse(
        {
            "models": models,
            "changes": _url(request, "changes", {}).rstrip("?"),
            "subscriptions": request.build_absolute_uri(reverse("pubsubpull:subscriptions")),
            "openapi": request.build_absolute_uri(reverse("pubsubpull:openapi")),
        }
    )


@require_GET
@api
def instances(request: HttpRequest, label: str) -> HttpResponse:
    """Rows of a tracked model in primary key order, keyset-paged by ``after``."""
    tracked = _readable(request, label)
    limit = _limit(request)
    after = request.GET.get("after")
    if after is not None:
        after = _primary_key(tracked, after, "after")
    results, last = reads.instances_page(tracked, after, limit)
    next_url = prefetch = None
    if last is not None:
        next_url = _url(request, "instances", {"after": last, "limit": limit}, label=tracked.label)
        # where the page after next starts: the last key of the next page (``last`` as the
        # next request's ``after`` will be read)
        beyond = reads.instances_key(tracked, _primary_key(tracked, last, "after"), limit - 1)
        if beyond is not None:
            query = {"after": beyond, "limit": limit}
            prefetch = _url(request, "instances", query, label=tracked.label)
    return json_page(results, next=next_url, prefetch=prefetch)


@require_GET
@api
def instance(request: HttpRequest, label: str, pk: str) -> HttpResponse:
    """One row of a tracked model."""
    tracked = _readable(request, label)
    doc = reads.instance(tracked, _primary_key(tracked, pk, "pk"))
    if doc is None:
        raise ApiError(404, "not_found", f"{tracked.label} {pk!r} does not exist")
    return HttpResponse(doc, content_type="application/json")


def _primary_key(tracked: registry.Tracked, value: str, parameter: str) -> Any:
    field = tracked.model._meta.pk
    assert field is not None
    try:
        return field.get_prep_value(field.to_python(value))
    except (ValidationError, ValueError, TypeError):
        raise bad_parameter(
            parameter, f"{value!r} is not a valid primary key of {tracked.label}"
        ) from None


@require_GET
@api
def changes(request: HttpRequest) -> HttpResponse:
    """Changes after a position, below the safe horizon, optionally long-polled."""
    limit = _limit(request)
    raw_after = request.GET.get("after")
    try:
        after = Position.parse(raw_after) if raw_after and raw_after != "now" else START
    except InvalidPosition as error:
        raise bad_parameter("after", str(error)) from None
    if raw_after == "now":  # a new reader that wants only what comes next
        after = reads.now()
    try:
        patterns = topics.parse(request.GET.get("topics"))
    except topics.InvalidPattern as error:
        raise bad_parameter("topics", str(error)) from None
    wait = _wait(request)
    with reads.rationed() if wait > 0 else contextlib.nullcontext():
        models, events = reads.scope(request.api_user)  # type: ignore[attr-defined]
    busy = False
    try:
        page = reads.wait_for_changes(models, after, patterns, limit, wait, events=events)
    except reads.TooManyWaiting as full:
        page, busy = full.page, True  # answered at once: come back later
    cursor = page.cursor(after, limit)
    next_url = None
    if len(page.results) == limit:
        query: dict[str, Any] = {"after": str(cursor), "limit": limit}
        if patterns:
            query["topics"] = ",".join(patterns)
        next_url = _url(request, "changes", query)
    response = json_page(page.results, next=next_url, cursor=str(cursor))
    if busy:
        response["Retry-After"] = str(RETRY_AFTER)
    return response


def _wait(request: HttpRequest) -> float:
    raw = request.GET.get("wait")
    if raw is None or raw == "":
        return 0.0
    cap = conf.settings.MAX_WAIT
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= 1e9 or wait != wait:
        raise bad_parameter("wait", "wait must be a number of seconds, 0 or more")
    return min(wait, cap)


@require_GET
@api
def openapi(request: HttpRequest) -> HttpResponse:
    """The OpenAPI 3.1 description of these endpoints."""
    from .openapi import schema

    base = request.build_absolute_uri(reverse("pubsubpull:directory"))
    return JsonResponse(schema(base))


@require_GET
@api
def subscription_list(request: HttpRequest) -> HttpResponse:
    """The caller's subscriptions."""
    owned = Subscription.objects.filter(owner=request.api_user)  # type: ignore[attr-defined]
    return JsonResponse({"results": [subscriptions.as_json(s) for s in owned]})


@require_http_methods(["GET", "PUT", "DELETE"])
@api
def subscription(request: HttpRequest, name: str) -> HttpResponse:
    """Create or replace (PUT), show (GET) or remove (DELETE) one of the caller's
    subscriptions."""
    owner = request.api_user  # type: ignore[attr-defined]
    if not subscriptions.NAME.fullmatch(name):
        raise ApiError(404, "not_found", "subscription names are 1-100 letters, digits, - or _")
    if request.method == "PUT":
        try:
            data = json.loads(request.body or b"null")
        except ValueError:
            raise ApiError(400, "invalid_json", "the body must be a JSON object") from None
        try:
            values = subscriptions.validate(owner, data)
            saved, created = subscriptions.save(owner, name, values)
        except subscriptions.Invalid as error:
            response = ApiError(400, "invalid_subscription", "see fields").response()
            response.content = json.dumps(
                {
                    "error": "invalid_subscription",
                    "detail": _summary(error.errors),
                    "fields": error.errors,
                }
            ).encode()
            return response
        from .tasks import wake_on_commit  # as the admin does: not at import

        wake_on_commit([saved.pk])
        return JsonResponse(subscriptions.as_json(saved), status=201 if created else 200)
    existing = Subscription.objects.filter(owner=owner, name=name).first()
    if existing is None:
        raise ApiError(404, "not_found", f"you have no subscription named {name!r}")
    if request.method == "DELETE":
        existing.delete()
        return HttpResponse(status=204)
    return JsonResponse(subscriptions.as_json(existing))


@require_POST
@api
def ping(request: HttpRequest, name: str) -> HttpResponse:
    """Send a ``pubsubpull.ping`` event to one of the caller's subscriptions now, and say
    how its target answered."""
    existing = (
        Subscription.objects.select_related("owner")
        .filter(
            owner=request.api_user,  # type: ignore[attr-defined]
            name=name,
        )
        .first()
    )
    if existing is None:
        raise ApiError(404, "not_found", f"you have no subscription named {name!r}")
    try:
        attempt = delivery.ping(existing)
    except delivery.NotPingable as error:
        raise ApiError(400, "not_pingable", str(error)) from None
    return JsonResponse(
        {
            "status_code": attempt.status_code,
            "duration": attempt.duration.total_seconds(),
            "error": attempt.error or None,
        }
    )


def _summary(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())


@require_GET
@api
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics, for staff (e.g. a token of a staff user in the scrape config)."""
    if not request.api_user.is_staff:  # type: ignore[attr-defined]
        raise ApiError(403, "permission_denied", "metrics are for staff users")
    if not metrics.AVAILABLE:
        raise ApiError(404, "not_found", metrics.INSTALL)
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)
