"""Ties every change made while serving a request to a ``pubsubpull.Request`` row."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from django.utils import timezone

from .metadata import RequestInfo, State, current, enter, leave
from .models import Request


class RequestMiddleware:
    """Attach request metadata (user, method, path) to the changes a request makes.

    The ``Request`` row is written by the capture trigger only when the request
    changes a tracked row; afterwards this middleware records the status and
    duration. Requests that change no tracked row cost no query.

    Override :meth:`get_metadata` to record more (it must return JSON-serialisable
    values; ``id``, ``method``, ``path``, ``user_id``, ``username`` and ``started`` are
    the ``Request`` columns).
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
            "path": request.get_full_path()[:2000],
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
