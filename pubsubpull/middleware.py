"""Ties every change made while serving a request to a ``pubsubpull.Request`` row."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils import timezone
from django.utils.encoding import escape_uri_path, iri_to_uri

from . import conf
from .change_context import RequestInfo, State, current, enter, leave
from .models import Request

MAX_PATH = 2000  # characters of Request.path
REDACTED = "REDACTED"


def recorded_path(request: HttpRequest) -> str:
    """The path a ``Request`` row records: readers of the changed models see it.

    Without its query string, which often carries secrets (``?api_key=``,
    ``?reset_token=``), unless ``PUBSUBPULL["REQUEST_QUERY"]``; then the values of
    parameters whose name contains a ``PUBSUBPULL["REDACT_QUERY"]`` entry (any case)
    are recorded as ``REDACTED``.
    """
    path = escape_uri_path(request.path)
    query = iri_to_uri(request.META.get("QUERY_STRING", ""))
    if query and conf.settings.REQUEST_QUERY:
        path += "?" + redact_query(query, conf.settings.REDACT_QUERY)
    return path[:MAX_PATH]


def redact_query(query: str, names: Sequence[str]) -> str:
    """``query`` with the values of parameters whose name contains one of ``names``
    (case-insensitive) replaced by ``REDACTED``; names, order and blank values kept."""
    hidden = [name.lower() for name in names if name]
    pairs = parse_qsl(
        query, keep_blank_values=True, encoding=settings.DEFAULT_CHARSET, errors="replace"
    )
    return urlencode(
        [(k, REDACTED if any(h in k.lower() for h in hidden) else v) for k, v in pairs]
    )


class RequestMiddleware:
    """Attach request metadata (user, method, path) to the changes a request makes.

    The ``Request`` row is written by the capture trigger only when the request
    changes a tracked row; afterwards this middleware records the status and
    duration. Requests that change no tracked row cost no query.

    Override :meth:`get_metadata` to record more (it must return JSON-serialisable
    values; ``id``, ``method``, ``path``, ``user_id``, ``username`` and ``started`` are
    the ``Request`` columns). The path has no query string unless
    ``PUBSUBPULL["REQUEST_QUERY"]``, and then its secrets are redacted (:func:`recorded_path`).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def get_metadata(self, request: HttpRequest) -> dict[str, Any]:
        """The request's columns; the user is added at the first write, not before."""
        return {
            "id": str(uuid.uuid4()),
            "method": request.method or "",
            "path": recorded_path(request),
            "started": timezone.now().isoformat(),
            "username": "",
        }

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        info, token, started = self._enter(request)
        try:
            response = self.get_response(request)
        finally:
            leave(token)
        self._complete(info, response, started)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        info, token, started = self._enter(request)
        try:
            response: HttpResponseBase = await self.get_response(request)
        finally:
            leave(token)
        if info.wrote:
            await sync_to_async(self._complete)(info, response, started)
        return response

    def _enter(self, request: HttpRequest) -> tuple[RequestInfo, Any, float]:
        outer = current() or State()
        info = RequestInfo(self.get_metadata(request), http_request=request)
        token = enter(State(info, outer.metadata))
        return info, token, time.monotonic()

    @staticmethod
    def _complete(info: RequestInfo, response: HttpResponseBase, started: float) -> None:
        if info.wrote:
            Request.objects.filter(id=info.metadata["id"]).update(
                status=response.status_code,
                duration=timedelta(seconds=time.monotonic() - started),
            )
