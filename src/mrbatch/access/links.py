"""Presigned links: an object key, an expiry and an HMAC-SHA256 signature over both.

A link is served by the access point's gateway from any region that holds the object, so a link
mailed before a failover keeps working after it. Signatures are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

from ..model.keys import check_key

__all__ = ["presign", "sign", "verify"]


def sign(secret: bytes, key: str, expires: int) -> str:
    message = f"GET\n{key}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def presign(
    secret: bytes, base_url: str, key: str, *, expires_in: float, now: float | None = None
) -> str:
    """A link to ``key`` valid for ``expires_in`` seconds."""
    check_key(key)
    expires = int((now if now is not None else time.time()) + expires_in)
    query = urlencode({"expires": expires, "signature": sign(secret, key, expires)})
    return f"{base_url.rstrip('/')}/objects/{quote(key)}?{query}"


def verify(
    secret: bytes, key: str, expires: str | int, signature: str, *, now: float | None = None
) -> str | None:
    """None when the link is valid, else why not ("expired", "bad signature")."""
    try:
        expires_at = int(expires)
    except (TypeError, ValueError):
        return "bad expiry"
    expected = sign(secret, key, expires_at)
    if not hmac.compare_digest(expected.encode(), str(signature).encode()):
        return "bad signature"
    if (now if now is not None else time.time()) > expires_at:
        return "expired"
    return None
