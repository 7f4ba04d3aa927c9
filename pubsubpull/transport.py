"""HTTP transport for webhook deliveries: a checked address, a total deadline, a capped answer.

:func:`send` sends one delivery (:func:`put` and :func:`post` name its method). It differs
from a plain ``requests.request`` in three ways:

* Pinning. The target is checked and its host resolved once
  (:func:`pubsubpull.ssrf.check_at_delivery`), and the connection goes to an address that
  check accepted, never to the answer of a second lookup (DNS rebinding). TLS still sends
  the URL's host name as SNI and verifies the certificate for it, and the ``Host`` header is
  the URL's ``host[:port]``.
* A total deadline. ``timeout`` bounds connect, send, status line, headers and body
  together: a watchdog shuts the socket down when it passes, so a target that answers one
  byte at a time cannot hold a worker longer.
* A capped answer. At most :data:`MAX_RESPONSE_BYTES` of the body are read; a connection
  whose body was not read to its end is closed, not reused.

Redirects are never followed. The environment's CA bundle (``REQUESTS_CA_BUNDLE``,
``CURL_CA_BUNDLE``) is used, its proxies and ``.netrc`` are not: a proxy would resolve the
host name itself, and ``.netrc`` credentials would go to whatever host a subscriber names.
Connections are kept alive per thread (:func:`session`) and per checked address.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from http.cookiejar import DefaultCookiePolicy
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from requests.hooks import default_hooks
from requests.structures import CaseInsensitiveDict
from urllib3 import exceptions as urllib3_errors
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Timeout

from pubsubpull import ssrf

__all__ = [
    "MAX_RESPONSE_BYTES",
    "DeliveryTimeout",
    "PinnedAdapter",
    "Response",
    "post",
    "put",
    "send",
    "session",
]

#: How much of a response body :func:`send` reads; the rest is never read.
MAX_RESPONSE_BYTES = 65536

_DEFAULT_PORTS = {"http": 80, "https": 443}
_local = threading.local()


class DeliveryTimeout(requests.Timeout):
    """No complete answer (status, headers and the capped body) came before the deadline."""


@dataclass(frozen=True)
class Response:
    """What a target answered: its status, its headers and the first bytes of its body."""

    status: int
    body: bytes  # at most MAX_RESPONSE_BYTES
    location: str = ""  # the Location header (of a redirect, never followed)
    #: The response headers, looked up case-insensitively (a repeated header's values
    #: joined with ", "). Not compared: servers add ones that vary, such as ``Date``.
    headers: Mapping[str, str] = field(default_factory=CaseInsensitiveDict, compare=False)


def session() -> requests.Session:
    """This thread's HTTP session for deliveries: keep-alive, with a :class:`PinnedAdapter`.

    Requests sent through it outside :func:`send` are refused (no address was checked).
    """
    current: requests.Session | None = getattr(_local, "session", None)
    if current is None:
        if not hasattr(HTTPAdapter, "get_connection_with_tls_context"):
            # Older requests would not call the pinning hook: refuse rather than connect
            # to whatever a second lookup answers.
            raise RuntimeError(
                f"pubsubpull deliveries need requests>=2.32.2, not {version('requests')}: "
                "upgrade requests"
            )
        current = requests.Session()
        current.trust_env = False  # no proxies, no .netrc: see the module docstring
        adapter = PinnedAdapter()
        current.mount("http://", adapter)
        current.mount("https://", adapter)
        # The body is read raw and capped, never decoded: ask for it uncompressed.
        current.headers["Accept-Encoding"] = "identity"
        # No cookies: what one subscription's target sets is never sent to another's.
        current.cookies = RequestsCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        _local.session = current
    return current


def put(url: str, data: bytes, headers: dict[str, str], timeout: float) -> Response:
    """PUT ``data`` to ``url``: :func:`send` with method PUT."""
    return send("PUT", url, data, headers, timeout)


def post(url: str, data: bytes, headers: dict[str, str], timeout: float) -> Response:
    """POST ``data`` to ``url``: :func:`send` with method POST."""
    return send("POST", url, data, headers, timeout)


def send(method: str, url: str, data: bytes, headers: dict[str, str], timeout: float) -> Response:
    """Send ``data`` to ``url`` with ``method``; return the status, the headers and at
    most the first 64 KiB of the body.

    ``url`` is checked and its host resolved once; the connection goes to the first
    address the check accepted, or the next one only when connecting to it fails.
    ``timeout`` (seconds) is the deadline for the whole attempt, from the address check to
    the last byte of the capped body (a slow DNS lookup counts against it but cannot be
    interrupted). Redirects are returned as they are, not followed. The body is returned
    as sent, not decoded.

    Raises :class:`pubsubpull.ssrf.TargetNotAllowed` when the check refuses the target,
    :class:`DeliveryTimeout` when the deadline passes first, and other
    ``requests.RequestException`` subclasses for network and TLS errors.
    """
    deadline = _Deadline(float(timeout))
    try:
        response = _send_checked(method, ssrf.check_at_delivery(url), data, headers, deadline)
    except requests.RequestException as error:
        # A socket timeout ends at the deadline, and a socket the watchdog shut down shows
        # up as a broken connection: both are the deadline.
        if isinstance(error, requests.Timeout) or deadline.passed():
            raise deadline.error() from error
        raise
    finally:
        deadline.stop()
    if deadline.passed():
        raise deadline.error()  # the answer came, but late: the same failure for every case
    return response


class PinnedAdapter(HTTPAdapter):
    """Connects to the address :func:`send` checked, with the deadline of that send.

    Connection pools are keyed by the checked IP address (and, for https, the host name the
    certificate must match), so a kept-alive connection is reused only to that address.
    The ``timeout``, ``proxies`` and ``Host`` a caller passes are overridden.
    """

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        """Set up the pool manager with connections whose sockets a deadline can shut down."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str,
        proxies: dict[str, str] | None = None,
        cert: str | tuple[str, str] | None = None,
    ) -> HTTPConnectionPool:
        """The pool for the checked address, with TLS set up for the URL's host name."""
        attempt = _attempt_for(request)
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        host_params["host"] = attempt.address
        host_params["port"] = attempt.destination.port
        if attempt.destination.scheme == "https":
            # Connecting to an IP address, but TLS is about the name: SNI and the
            # certificate check use the URL's host.
            pool_kwargs["server_hostname"] = attempt.destination.host
            pool_kwargs["assert_hostname"] = attempt.destination.host
        return self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        """Name the URL's host in ``Host``: the connection itself goes to an IP address."""
        request.headers["Host"] = _attempt_for(request).destination.authority

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` to the checked address, within what is left of the deadline."""
        deadline = _attempt_for(request).deadline
        remaining = deadline.remaining()
        if remaining <= 0:
            raise deadline.error()
        # urllib3's total timeout: connecting gets at most the time left, reading what is left
        # after connecting. requests accepts a urllib3 Timeout (HTTPAdapter.send documents
        # it) though its type alias does not say so.
        return super().send(
            request,
            stream=stream,
            timeout=Timeout(total=remaining),  # type: ignore[arg-type]
            verify=verify,
            cert=cert,
            proxies=None,  # a proxy would resolve the host name itself
        )


class _Deadline:
    """The deadline of one :func:`send`: when it passes, shut down the sockets in use.

    A socket timeout restarts with every byte received, so a target trickling bytes never
    triggers one; shutting the socket down from the watchdog thread ends any pending connect,
    send or receive at once.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[tuple[HTTPConnection, socket.socket]] = []
        self._fired = False
        self._stopped = False
        _watchdog().add(self)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    def passed(self) -> bool:
        """Whether the deadline has passed (the watchdog may not have run yet)."""
        return self._fired or self.remaining() <= 0

    def error(self) -> DeliveryTimeout:
        """The exception for an attempt that ran out of time."""
        return DeliveryTimeout(f"no complete answer within {self.seconds} s")

    def watch(self, connection: HTTPConnection, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (at once if it has passed)."""
        # A duplicate descriptor of the same socket: it stays valid whatever the connection
        # does with its socket object meanwhile (TLS wraps it and detaches the original).
        duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        with self._lock:
            self._watched.append((connection, duplicate))
            if self._fired:
                _shutdown(duplicate)

    def stop(self) -> None:
        """Stop watching (idempotent).

        Connections whose socket was shut down are closed, so the pool never reuses them.
        """
        with self._lock:
            self._stopped = True
            watched, self._watched = self._watched, []
        for connection, duplicate in watched:
            duplicate.close()
            if self._fired:
                connection.close()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def fire(self) -> None:
        """The deadline passed: shut down the sockets in use (unless stopped)."""
        with self._lock:
            if self._stopped:
                return
            self._fired = True
            for _, duplicate in self._watched:
                _shutdown(duplicate)


class _Watchdog:
    """One thread per process that fires the deadlines of sends as they pass; a send adds
    its deadline to a heap. A timer thread per send, started and cancelled each time, was
    a large part of a send's CPU (with the prefixes of ALLOWED_TARGETS parsed once: a PUT
    to a loopback target took about 1.2 ms of the worker's CPU before, 0.8 ms after)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._deadlines: list[tuple[float, int, _Deadline]] = []  # a heap by time
        self._order = itertools.count()  # ties never compare deadlines
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline) -> None:
        """Fire ``deadline`` when it passes, unless it was stopped by then."""
        with self._condition:
            heapq.heappush(self._deadlines, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pubsubpull-deadlines", daemon=True
                )
                self._thread.start()
            elif self._deadlines[0][2] is deadline:
                self._condition.notify()  # sooner than what the thread waits for

    def _run(self) -> None:
        while True:
            with self._condition:
                while True:
                    while self._deadlines and self._deadlines[0][2].stopped:
                        heapq.heappop(self._deadlines)  # answered in time: forget it
                    if not self._deadlines:
                        self._condition.wait()
                        continue
                    left = self._deadlines[0][0] - time.monotonic()
                    if left <= 0:
                        due = heapq.heappop(self._deadlines)[2]
                        break
                    self._condition.wait(left)
            due.fire()


_watchdogs: dict[int, _Watchdog] = {}
_watchdogs_lock = threading.Lock()


def _watchdog() -> _Watchdog:
    """This process's watchdog (a forked process makes its own: threads do not fork)."""
    pid = os.getpid()
    watchdog = _watchdogs.get(pid)
    if watchdog is None:
        with _watchdogs_lock:
            watchdog = _watchdogs.setdefault(pid, _Watchdog())
    return watchdog


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer


@dataclass
class _Attempt:
    """One connection attempt of a put: the checked target, the address, the deadline."""

    destination: ssrf.Destination
    address: str
    deadline: _Deadline
    connected: bool = False  # a socket to the address was opened or reused: bytes may have left


# The attempt in progress in this thread (context), read by the adapter and the connections.
_attempt: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "pubsubpull_transport_attempt", default=None
)


def _send_checked(
    method: str,
    destination: ssrf.Destination,
    data: bytes,
    headers: dict[str, str],
    deadline: _Deadline,
) -> Response:
    """Send to the checked addresses in turn until one accepts the connection."""
    last = len(destination.addresses) - 1
    for index, address in enumerate(destination.addresses):
        attempt = _Attempt(destination, address, deadline)
        token = _attempt.set(attempt)
        try:
            return _send(method, destination.url, data, headers)
        except requests.ConnectionError:
            # Like socket.create_connection: try the next address only if nothing was sent.
            if attempt.connected or index == last or deadline.remaining() <= 0:
                raise
        finally:
            _attempt.reset(token)
    raise AssertionError("check_at_delivery returns at least one address")


def _send(method: str, url: str, data: bytes, headers: dict[str, str]) -> Response:
    current = session()
    request = _prepared(current, method, url, data, headers)
    with current.send(
        request, allow_redirects=False, stream=True, verify=_ca_bundle(), proxies={}
    ) as r:
        # Closing the response (leaving the block) closes the connection unless the body
        # was read to its end, so an unread rest is never drained nor left for the next put.
        return Response(
            r.status_code,
            _read_capped(r),
            r.headers.get("Location", ""),
            CaseInsensitiveDict(r.headers),
        )


def _prepared(
    current: requests.Session, method: str, url: str, data: bytes, headers: dict[str, str]
) -> requests.PreparedRequest:
    """The request ``Session.request`` would send, made without its merging of settings,
    hooks, cookies and environment on every call (a fifth of a send's CPU): the session's
    headers under ``headers``, the body and its length, the URL as requests normalises it
    (once per URL), no cookies (see :func:`session`). ``headers`` are
    checked where they come from (``subscriptions.HEADER_NAME``, ``HEADER_VALUE``), and
    http.client refuses a line break in any header."""
    request = requests.PreparedRequest()
    request.method = method
    request.url = _normalised_url(url)
    request.headers = CaseInsensitiveDict(current.headers)
    request.headers.update(headers)
    request.headers["Content-Length"] = str(len(data))
    request.body = data
    request.hooks = default_hooks()
    request.prepare_cookies(current.cookies)  # none: the session's jar refuses them
    return request


@lru_cache(maxsize=4096)
def _normalised_url(url: str) -> str:
    """``url`` as requests sends it (IDNA host name, path and query quoted)."""
    request = requests.PreparedRequest()
    request.prepare_url(url, None)
    assert request.url is not None
    return request.url


def _ca_bundle() -> str | bool:
    """The CA bundle the environment names, as requests reads it (trust_env is off)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _read_capped(response: requests.Response) -> bytes:
    """At most MAX_RESPONSE_BYTES of the body, undecoded; urllib3 errors as requests ones."""
    try:
        body: bytes = response.raw.read(MAX_RESPONSE_BYTES, decode_content=False)
    except urllib3_errors.ReadTimeoutError as error:
        raise requests.ReadTimeout(error, request=response.request) from error
    except urllib3_errors.SSLError as error:
        raise requests.exceptions.SSLError(error, request=response.request) from error
    except urllib3_errors.ProtocolError as error:
        raise requests.exceptions.ChunkedEncodingError(error, request=response.request) from error
    except urllib3_errors.HTTPError as error:
        raise requests.ConnectionError(error, request=response.request) from error
    return body


def _attempt_for(request: requests.PreparedRequest) -> _Attempt:
    """The current attempt, if ``request`` goes to the target it checked; else refuse."""
    attempt = _attempt.get()
    if attempt is None:
        raise ssrf.TargetNotAllowed(
            f"{request.url}: no address was checked for this request: send deliveries with "
            "pubsubpull.transport.put, which checks the target and connects to that address"
        )
    parts = urlsplit(request.url or "")
    scheme = parts.scheme.lower()
    destination = attempt.destination
    if (scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(scheme)) != (
        destination.scheme,
        destination.host,
        destination.port,
    ):
        raise ssrf.TargetNotAllowed(
            f"{request.url} is not the target checked for this delivery ({destination.url}): "
            "send each target with its own pubsubpull.transport.put"
        )
    return attempt


def _watch(connection: HTTPConnection, sock: socket.socket) -> None:
    """Put ``sock`` under the current attempt's deadline."""
    attempt = _attempt.get()
    if attempt is not None:
        attempt.connected = True
        attempt.deadline.watch(connection, sock)


class _WatchedHTTPConnection(HTTPConnection):
    """A connection whose socket the current put's deadline can shut down."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        try:
            _watch(self, sock)  # before the TLS handshake, which the deadline covers too
        except BaseException:
            sock.close()
            raise
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        # A connection kept alive from an earlier put (or an https one _new_conn watched
        # already: a second watch of the same socket is harmless).
        if self.sock is not None:
            _watch(self, self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """The https variant of :class:`_WatchedHTTPConnection`."""


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection
