"""A client for a pubsubpull service's pull endpoints, for any Python program.

It needs only ``requests``: no Django settings, no database. ::

    from pubsubpull.client import Service

    with Service("https://shop.example/pubsubpull/", token="psp_...") as shop:
        for customer in shop.instances("shop.customer"):
            ...
        changes = shop.changes(after=saved_cursor, topics=["shop.order.*"], wait=25)
        for change in changes:
            ...
        saved_cursor = changes.cursor  # resume here next time

Errors come as :class:`ServiceError` subclasses carrying the server's JSON message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urljoin, urlsplit

import requests
from requests.auth import AuthBase

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "Changes",
    "NotFound",
    "PermissionDenied",
    "Service",
    "ServiceError",
    "ServiceUnavailable",
]

JSON = dict[str, Any]
Params = dict[str, str | int | float]
Auth = tuple[str, str] | AuthBase | Callable[..., Any]

DEFAULT_TIMEOUT = 30.0


class ServiceError(Exception):
    """The service answered with an error, or could not be asked.

    ``status`` is the HTTP status (None when no answer came), ``code`` the machine-readable
    ``error`` of the JSON body (e.g. ``"invalid_parameter"``), ``detail`` its message and
    ``parameter`` the query parameter it names, if any.
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        detail: str,
        parameter: str | None = None,
        *,
        url: str | None = None,
    ) -> None:
        self.status, self.code, self.detail, self.parameter = status, code, detail, parameter
        self.url = url
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"{self.status} {self.code}" if self.status is not None else self.code
        message = f"{head}: {self.detail}"
        if self.parameter:
            message += f" (parameter {self.parameter!r})"
        return message + (f" [GET {self.url}]" if self.url else "")


class BadRequest(ServiceError):
    """400: a parameter was invalid; ``parameter`` names it."""


class AuthenticationError(ServiceError):
    """401: credentials are missing, wrong or revoked."""


class PermissionDenied(ServiceError):
    """403: the caller may not view this model (it lacks the ``view`` permission)."""


class NotFound(ServiceError):
    """404: no such model, row, or endpoint (check the base URL)."""


class ServiceUnavailable(ServiceError):
    """The service could not be reached, timed out, or answered 502/503/504: retry later."""


_ERRORS: dict[int, type[ServiceError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}


class Service:
    """A pubsubpull service at ``base_url`` (where its ``pubsubpull.urls`` are included).

    Authenticate with ``token`` (sent as ``Authorization: Bearer <token>``) or ``auth``,
    anything ``requests`` accepts (``("user", "password")`` for HTTP Basic). ``timeout`` is
    the seconds to wait for an answer; a long poll waits ``wait`` seconds more. One
    ``requests.Session`` is kept per service for keep-alive: a ``Service`` is not meant to
    be shared between threads; :meth:`close` it, or use it as a context manager.
    (:meth:`instances` asks for the next two pages from threads of its own while a page
    is consumed: the session's connection pool serves them at once.)
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        auth: Auth | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if token is not None and auth is not None:
            raise ValueError("give either token or auth, not both")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if auth is not None:
            self.session.auth = auth

    def __repr__(self) -> str:
        return f"<Service {self.base_url}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def directory(self) -> JSON:
        """The directory: ``{"models": [...], "changes": url, "subscriptions": url,
        "openapi": url}``."""
        return self._get(self.base_url, expect=("models",))

    def models(self) -> list[JSON]:
        """The tracked models this caller may read: ``{"label", "url", "changes", "rows"}``
        each (``rows``: the server's estimate of the model's rows, or None)."""
        return list(self.directory()["models"])

    def instances(
        self, label: str, after: str | int | None = None, limit: int | None = None
    ) -> Generator[JSON, None, None]:
        """Every row of model ``label`` (``"app_label.model_name"``) in primary key order,
        after primary key ``after`` if given, fetched ``limit`` rows per request as the
        iteration goes (a generator: errors are raised from the iteration).

        While a page is decoded and its rows consumed, the pages the server names in its
        ``Link`` header (the next one, and the one after it: ``rel="prefetch"``) are
        already asked for, from threads: the server builds two pages at once meanwhile.
        Stopping the iteration early leaves at most those two requests unread.
        """
        url = self._url("models", label)
        ahead = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pubsubpull-read-ahead")
        asked: dict[tuple[tuple[str, str], ...], Future[requests.Response]] = {}
        try:
            response = self._response("GET", url, _params(after=after, limit=limit))
            while True:
                named = set()
                for rel in ("next", "prefetch"):
                    link = response.links.get(rel, {}).get("url")
                    if link:
                        query = _query(link)
                        key = _key(query)
                        named.add(key)
                        if key not in asked:
                            asked[key] = _read_ahead(ahead, self._response, "GET", url, query)
                for stale in asked.keys() - named:  # asked for by an earlier page's link
                    asked.pop(stale).cancel()
                page = self._answer(response, expect=("results",))
                yield from page["results"]
                if not page.get("next"):
                    return
                wanted = _query(page["next"])
                # an older server (no Link header), or one whose Link said otherwise: the
                # body's ``next`` is what counts
                following = asked.pop(_key(wanted), None)
                response = following.result() if following else self._response("GET", url, wanted)
        finally:
            ahead.shutdown(wait=False, cancel_futures=True)

    def instance(self, label: str, pk: str | int) -> JSON:
        """The row of model ``label`` with primary key ``pk``; :class:`NotFound` if absent."""
        return self._get(self._url("models", label, str(pk)))

    def changes(
        self,
        after: str | None = None,
        topics: str | Iterable[str] | None = None,
        wait: float | None = None,
        limit: int | None = None,
    ) -> Changes:
        """The changes after position ``after`` (a ``cursor`` or a change ``id``; None: from
        the start), as an iterator whose ``cursor`` tells where to resume.

        ``topics`` are patterns (``"shop.order.*"``, ``"shop.#"``) as a list or a
        comma-separated string. Pages are followed until the server has no more to give;
        with ``wait`` every request long-polls up to that many seconds for a first change,
        so a loop calling ``changes(after=previous.cursor, wait=...)`` follows the log.
        Nothing is requested until the iteration starts; errors are raised from it.
        """
        if topics is not None and not isinstance(topics, str):
            topics = ",".join(topics)
        params = _params(after=after, topics=topics or None, limit=limit, wait=wait)
        return Changes(self, params, wait)

    def _url(self, *parts: str) -> str:
        return urljoin(self.base_url, "".join(quote(p, safe="") + "/" for p in parts))

    def subscribe(
        self,
        name: str,
        target: str,
        *,
        topics: list[str] | None = None,
        filter: str | None = None,
        batch_size: int | None = None,
        secret: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        max_bytes: int | None = None,
        payload: str | None = None,
        format: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> JSON:
        """Create or replace subscription ``name``: the service PUTs matching changes to
        ``target``. Returns the subscription (never its secret); options left as None are
        not sent (on a replace, the cursor, status and secret then stay as they were).

        ``max_bytes`` caps a delivery's body (default: the service's
        ``PUBSUBPULL["MAX_BATCH_BYTES"]``); ``payload="thin"`` sends changes without
        ``old`` and ``new``; ``format="standard"`` POSTs each change as a Standard Webhooks
        message; ``headers`` are sent with every delivery (kept on a replace that leaves
        them out, ``{}`` removes them; the service shows their names only)."""
        body = {
            "target": target,
            "topics": topics,
            "filter": filter,
            "batch_size": batch_size,
            "secret": secret,
            "status": status,
            "cursor": cursor,
            "max_bytes": max_bytes,
            "payload": payload,
            "format": format,
            "headers": headers,
        }
        return self._request(
            "PUT",
            self._url("subscriptions", name),
            body={k: v for k, v in body.items() if v is not None},
            expect=("name", "status"),
        )

    def subscription(self, name: str) -> JSON:
        """One of the caller's subscriptions, with its lag and last error."""
        return self._get(self._url("subscriptions", name), expect=("name", "status"))

    def subscriptions(self) -> list[JSON]:
        """The caller's subscriptions."""
        return list(self._get(self._url("subscriptions"), expect=("results",))["results"])

    def ping(self, name: str) -> JSON:
        """Have the service send a ``pubsubpull.ping`` event to the target of subscription
        ``name`` now: ``{"status_code", "duration", "error"}`` of its answer."""
        return dict(self._request("POST", self._url("subscriptions", name, "ping")))

    def unsubscribe(self, name: str) -> None:
        """Delete subscription ``name``; :class:`NotFound` if there is none."""
        self._request("DELETE", self._url("subscriptions", name))

    def _get(
        self,
        url: str,
        params: Params | None = None,
        wait: float | None = None,
        expect: tuple[str, ...] = (),
    ) -> JSON:
        """The JSON object at ``url``, which must hold the keys in ``expect``."""
        return self._request("GET", url, params=params, wait=wait, expect=expect)

    def _request(
        self,
        method: str,
        url: str,
        params: Params | None = None,
        body: JSON | None = None,
        wait: float | None = None,
        expect: tuple[str, ...] = (),
    ) -> JSON:
        response = self._response(method, url, params, body, wait)
        return self._answer(response, wait, expect)

    def _response(
        self,
        method: str,
        url: str,
        params: Params | None = None,
        body: JSON | None = None,
        wait: float | None = None,
    ) -> requests.Response:
        """The server's answer, read whole; a :class:`ServiceError` for an error status or
        when no answer came."""
        timeout = self.timeout + (wait or 0.0)
        try:
            response = self.session.request(method, url, params=params, json=body, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise ServiceUnavailable(None, "unavailable", str(error), url=url) from error
        except requests.RequestException as error:
            raise ServiceError(None, "request_failed", str(error), url=url) from error
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _answer(
        self, response: requests.Response, wait: float | None = None, expect: tuple[str, ...] = ()
    ) -> JSON:
        """The JSON object of an answer, which must hold the keys in ``expect``."""
        if response.status_code == 204:
            return {}
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or any(key not in answer for key in expect):
            raise ServiceError(
                response.status_code,
                "invalid_response",
                "not an answer of pubsubpull: is the base URL where pubsubpull.urls is "
                f"included? ({_excerpt(response)})",
                url=response.url,
            )
        retry_after = response.headers.get("Retry-After", "")
        if wait and retry_after.isdigit():
            # A long poll answered at once because the server has enough waiting: wait
            # here instead, so a loop of long polls does not become a busy loop.
            time.sleep(min(float(retry_after), wait))
        return answer


class Changes(Iterator[JSON]):
    """The changes :meth:`Service.changes` reads, page by page as they are consumed.

    ``cursor`` is the position to resume from (``Service.changes(after=changes.cursor)``):
    it starts at ``after``, becomes each change's ``id`` as that change is handed out, and the
    server's ``cursor`` once a page is used up, which may move past changes this reader is
    not shown (other topics, or models it may not view). Save it only after handling the
    changes before it.
    """

    def __init__(self, service: Service, params: Params, wait: float | None) -> None:
        self.service = service
        after = params.get("after")
        self.cursor: str | None = None if after is None else str(after)
        self._params = params
        self._wait = wait
        self._pages = self._read()

    def __repr__(self) -> str:
        return f"<Changes of {self.service.base_url} cursor={self.cursor!r}>"

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> JSON:
        return next(self._pages)

    def _read(self) -> Iterator[JSON]:
        url = self.service._url("changes")
        params = self._params
        while True:
            page = self.service._get(url, params, self._wait, ("results", "cursor"))
            for change in page["results"]:
                self.cursor = change["id"]
                yield change
            self.cursor = page["cursor"]
            if not page.get("next"):
                return
            # ``next`` carries the state but not ``wait``; keep long-polling on every page.
            params = {**_query(page["next"]), **_params(wait=self._wait)}


def _read_ahead(
    pool: ThreadPoolExecutor, response: Callable[..., requests.Response], *args: Any
) -> Future[requests.Response]:
    """``response(*args)`` in ``pool``'s thread, returning once that thread has started on
    it: the request then leaves before the caller goes on to decode a page (``json.loads``
    holds the GIL throughout, and would otherwise hold the request back until it is done)."""
    running = threading.Event()

    def read() -> requests.Response:
        running.set()
        return response(*args)

    future = pool.submit(read)
    running.wait()
    return future


def _key(query: Params) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in query.items()))


def _params(**values: str | int | float | None) -> Params:
    return {key: value for key, value in values.items() if value is not None}


def _query(next_url: str) -> Params:
    """The query of a ``next`` link, to ask the same endpoint for the next page.

    The link's scheme and host are not followed: behind a proxy they may name an internal
    address, and the credentials must not go anywhere but ``base_url``.
    """
    return dict(parse_qsl(urlsplit(next_url).query, keep_blank_values=True))


def _error(response: requests.Response) -> ServiceError:
    cls = _ERRORS.get(response.status_code, ServiceError)
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        code, detail = str(body["error"]), str(body.get("detail", ""))
        parameter = body.get("parameter")
        parameter = None if parameter is None else str(parameter)
    else:
        code, detail, parameter = f"http_{response.status_code}", _excerpt(response), None
    return cls(response.status_code, code, detail, parameter, url=response.url)


def _excerpt(response: requests.Response) -> str:
    text = " ".join(response.text.split())
    reason = f"{response.status_code} {response.reason}"
    return f"{reason}: {text[:200]}" if text else reason
