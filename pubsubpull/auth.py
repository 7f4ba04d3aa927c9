"""Who is calling: Django session, HTTP Basic, or ``Authorization: Bearer <token>``.

Failed HTTP Basic attempts are counted per client address (``REMOTE_ADDR``) in Django's
cache: past ``FAILURE_LIMIT`` failures within ``FAILURE_WINDOW`` seconds, Basic requests
from that address are refused (:class:`Throttled`) without checking them, until the window
ends. Tokens are never throttled: checking one costs a SHA-256 and an index lookup, and
refusing them would let one client's wrong passwords lock out every service behind the
same address (a NAT, a proxy). Behind a reverse proxy ``REMOTE_ADDR`` is the proxy's: set it
from ``X-Forwarded-For`` in a middleware of your own that trusts only your proxies (this
module never reads that header, which any client can send). The count is per process
with Django's default local-memory cache: with several processes, set ``CACHES`` to a
shared cache (Redis, Memcached) for one count per address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import secrets
import time
from datetime import timedelta
from typing import Any

from django.contrib.auth import authenticate as authenticate_password
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest
from django.utils import timezone

from .models import Token
from .sql import render

TOKEN_PREFIX = "psp_"

# A wrong password costs a password hash (about 0.3 s of CPU with Django's default
# PBKDF2): an address past FAILURE_LIMIT failed Basic attempts within
# FAILURE_WINDOW seconds of its first one is refused without checking, until the window
# ends. A success does not reset the count: a valid account would otherwise let its holder
# guess others' passwords without limit.
FAILURE_LIMIT = 10
FAILURE_WINDOW = 60  # seconds, an int (cache timeouts)
CACHE_PREFIX = "pubsubpull:auth-failures:"


class AuthenticationFailed(Exception):
    """Credentials were given but are wrong (401, never a fallback to anonymous)."""


class Throttled(AuthenticationFailed):
    """Too many failed attempts from the caller's address: retry in ``retry_after`` s (429)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed authentication attempts from this address: retry in {retry_after} s"
        )
        self.retry_after = retry_after


def digest(token: str) -> str:
    # Tokens are 256 random bits: a plain SHA-256 is enough to store them safely.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(user: Any, name: str = "") -> tuple[Token, str]:
    """A new token for ``user``: the row and the token text, which is not stored."""
    text = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = Token.objects.create(user=user, name=name, digest=digest(text), prefix=text[:12])
    return token, text


def authenticate(request: HttpRequest) -> Any | None:
    """The calling user, None when no credentials came, or :class:`AuthenticationFailed`
    (:class:`Throttled` when Basic credentials from the caller's address failed too
    often; see the module)."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        return _token_user(credentials.strip())
    if scheme.lower() == "basic":
        address = request.META.get("REMOTE_ADDR") or ""
        _check_throttle(address)
        try:
            return _basic_user(request, credentials.strip())
        except AuthenticationFailed:
            _count_failure(address)
            raise
    if header:
        raise AuthenticationFailed("unsupported Authorization scheme: use Bearer or Basic")
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None


def _token_user(text: str) -> Any:
    users = get_user_model()
    pk_column = users._meta.pk.column
    assert pk_column is not None  # a concrete model's primary key has a column
    quote = connection.ops.quote_name
    query = render("token_user", users=quote(users._meta.db_table), user_pk=quote(pk_column))
    user: Any = next(iter(users._default_manager.raw(query, {"digest": digest(text)})), None)
    if user is None or not user.is_active:
        raise AuthenticationFailed("invalid or revoked token")
    now, last_used = timezone.now(), user.pubsubpull_token_last_used
    if last_used is None or now - last_used > timedelta(minutes=5):
        # coarse, not per request
        Token.objects.filter(pk=user.pubsubpull_token_id).update(last_used=now)
    return user


def _basic_user(request: HttpRequest, credentials: str) -> Any:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationFailed("malformed Basic credentials") from None
    username, colon, password = decoded.partition(":")
    if not colon:  # not "user:password": refused without hashing a password
        raise AuthenticationFailed("malformed Basic credentials")
    user = authenticate_password(request, username=username, password=password)
    if user is None:
        raise AuthenticationFailed("invalid username or password")
    return user


def _keys(address: str) -> tuple[str, str]:
    """Cache keys of an address's window start and of the failures counted in it."""
    # Hashed: any text fits a cache key (memcached refuses spaces and long keys).
    key = CACHE_PREFIX + hashlib.sha256(address.encode()).hexdigest()[:32]
    return key, key + ":count"


def _check_throttle(address: str) -> None:
    start_key, count_key = _keys(address)
    start = cache.get(start_key)
    if start is None:
        return  # no failure in the current window: one cache read for a valid caller
    left = start + FAILURE_WINDOW - time.time()
    if left > 0 and cache.get(f"{count_key}:{start}", 0) >= FAILURE_LIMIT:
        raise Throttled(retry_after=max(1, math.ceil(left)))


def _count_failure(address: str) -> None:
    start_key, count_key = _keys(address)
    # The window starts at the first failure and ends with the start key. add() is atomic
    # and sets its timeout on every cache backend (incr() keeps it on some only), and a
    # count keyed by its window's start goes with it.
    cache.add(start_key, time.time(), FAILURE_WINDOW)
    start = cache.get(start_key)
    if start is None:  # expired between the two calls
        return
    key = f"{count_key}:{start}"
    cache.add(key, 0, FAILURE_WINDOW)
    try:
        cache.incr(key)
    except ValueError:  # evicted or expired since add()
        cache.add(key, 1, FAILURE_WINDOW)
