"""Who is calling: Django session, HTTP Basic, or ``Authorization: Bearer <token>``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.contrib.auth import authenticate as authenticate_password
from django.http import HttpRequest
from django.utils import timezone

from .models import Token

TOKEN_PREFIX = "psp_"


class AuthenticationFailed(Exception):
    """Credentials were given but are wrong (401, never a fallback to anonymous)."""


def digest(token: str) -> str:
    # Tokens are 256 random bits: a plain SHA-256 is enough to store them safely.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(user: Any, name: str = "") -> tuple[Token, str]:
    """A new token for ``user``: the row and the token text, which is not stored."""
    text = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = Token.objects.create(user=user, name=name, digest=digest(text), prefix=text[:12])
    return token, text


def authenticate(request: HttpRequest) -> Any | None:
    """The calling user, None when no credentials came, or :class:`AuthenticationFailed`."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        return _token_user(credentials.strip())
    if scheme.lower() == "basic":
        return _basic_user(request, credentials.strip())
    if header:
        raise AuthenticationFailed("unsupported Authorization scheme: use Bearer or Basic")
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None


def _token_user(text: str) -> Any:
    token = Token.objects.select_related("user").filter(digest=digest(text)).first()
    if token is None or not token.user.is_active:
        raise AuthenticationFailed("invalid or revoked token")
    now = timezone.now()
    if token.last_used is None or now - token.last_used > timedelta(minutes=5):
        Token.objects.filter(pk=token.pk).update(last_used=now)  # coarse, not per request
    return token.user


def _basic_user(request: HttpRequest, credentials: str) -> Any:
    try:
        username, _, password = base64.b64decode(credentials).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationFailed("malformed Basic credentials") from None
    user = authenticate_password(request, username=username, password=password)
    if user is None:
        raise AuthenticationFailed("invalid username or password")
    return user
