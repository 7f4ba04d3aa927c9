"""Subscription secrets encrypted at rest.

Standard Webhooks signatures are HMACs, so the sender needs the secret itself: it
cannot be hashed, only encrypted. The key derives from ``SECRET_KEY`` (and
``SECRET_KEY_FALLBACKS``, so rotating the key keeps old secrets readable).
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted (SECRET_KEY changed without a fallback)."""


def _fernet() -> MultiFernet:
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet(
        [
            Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"pubsubpull:" + k.encode()).digest()))
            for k in keys
        ]
    )


def encrypt(secret: str) -> str:
    """The secret encrypted with a key derived from SECRET_KEY."""
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(stored: str, what: str = "secret") -> str:
    """The secret back from :func:`encrypt`; ``what`` names it in the error (e.g. "header
    'Authorization'")."""
    try:
        return _fernet().decrypt(stored.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            f"the subscription {what} cannot be decrypted (SECRET_KEY changed?): "
            f"PUT the subscription again with its {what}"
        ) from None
