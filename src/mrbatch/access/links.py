"""Presigned links: an object key, an expiry and an HMAC-SHA256 signature over both.

A link is served by the access point's gateway from any region that holds the object, so a link
mailed before a failover keeps working after it. Signatures are compared in constant time.

Links have a maximum lifetime (``gateway.max_link_lifetime``): none is signed for longer, and
none whose expiry lies further ahead is honoured. The signing key can be rotated without a
gateway restart (:class:`SigningKeys`): links signed with a retired key stay valid until they
expire, unless the retired keys are revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

from ..errors import ConfigError, UsageError
from ..model.keys import check_key

__all__ = ["SigningKeys", "presign", "sign", "verify"]

MIN_KEY_LENGTH = 32


def sign(secret: bytes, key: str, expires: int) -> str:
    message = f"GET\n{key}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def presign(
    secret: bytes,
    base_url: str,
    key: str,
    *,
    expires_in: float,
    now: float | None = None,
    max_lifetime: float | None = None,
) -> str:
    """A link to ``key`` valid for ``expires_in`` seconds (at most ``max_lifetime``)."""
    check_key(key)
    if max_lifetime is not None and expires_in > max_lifetime:
        raise UsageError(
            f"a link valid for {expires_in:.0f}s is longer than the maximum of"
            f" {max_lifetime:.0f}s (gateway.max_link_lifetime)",
            hint="ask for a shorter expiry, or raise gateway.max_link_lifetime",
        )
    if expires_in <= 0:
        raise UsageError("a link must be valid for some time; give a positive expiry")
    expires = int((now if now is not None else time.time()) + expires_in)
    query = urlencode({"expires": expires, "signature": sign(secret, key, expires)})
    return f"{base_url.rstrip('/')}/objects/{quote(key)}?{query}"


def verify(
    keys: bytes | Sequence[bytes],
    key: str,
    expires: str | int,
    signature: str,
    *,
    now: float | None = None,
    max_lifetime: float | None = None,
) -> str | None:
    """None when the link is valid under one of ``keys``, else why not ("bad expiry", "bad
    signature", "expired", "beyond the maximum lifetime")."""
    try:
        expires_at = int(expires)
    except (TypeError, ValueError):
        return "bad expiry"
    candidates = [keys] if isinstance(keys, bytes) else list(keys)
    given = str(signature).encode()
    matched = False
    for secret in candidates:  # every key is tried, so the time taken tells nothing
        matched |= hmac.compare_digest(sign(secret, key, expires_at).encode(), given)
    if not matched:
        return "bad signature"
    moment = now if now is not None else time.time()
    if moment > expires_at:
        return "expired"
    if max_lifetime is not None and expires_at - moment > max_lifetime:
        return "beyond the maximum lifetime"
    return None


class SigningKeys:
    """The current signing key (``<data dir>/signing.key``) and the retired ones still
    honoured (``<data dir>/signing.retired/<retired-at>.key``), re-read when they change.

    A retired key is honoured for ``max_lifetime`` after it was retired: by then every link it
    signed has expired. ``rotate`` retires the current key and makes a new one; with
    ``revoke`` the retired keys are deleted, so their links stop working at once."""

    def __init__(self, data_dir: Path, max_lifetime: float) -> None:
        self.current_path = data_dir / "signing.key"
        self.retired_dir = data_dir / "signing.retired"
        self.max_lifetime = max_lifetime
        self._stamp: tuple[float, float] | None = None
        self._keys: list[bytes] = []

    def _read(self, path: Path) -> bytes:
        value = path.read_text(encoding="ascii").strip()
        if len(value) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{path} holds {'no key' if not value else 'a key that is too short'}"
                f" (at least {MIN_KEY_LENGTH} characters are needed)",
                hint=f"delete {path}; mrbatch then creates a new random one",
            )
        return value.encode("ascii")

    def _mtime(self, path: Path) -> float:
        try:
            return path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return 0.0

    def honoured(self, now: float | None = None) -> list[bytes]:
        """The current key first, then every retired key still honoured."""
        stamp = (self._mtime(self.current_path), self._mtime(self.retired_dir))
        if stamp != self._stamp or not self._keys:
            keys = [self._read(self.current_path)]
            moment = time.time() if now is None else now
            if self.retired_dir.is_dir():
                for path in sorted(self.retired_dir.glob("*.key"), reverse=True):
                    retired_at = float(path.stem)
                    if moment - retired_at <= self.max_lifetime:
                        keys.append(self._read(path))
            self._stamp, self._keys = stamp, keys
        return list(self._keys)

    def rotate(self, *, revoke: bool = False, now: float | None = None) -> dict[str, int]:
        """Retire the current key (or, with ``revoke``, drop it and every retired key) and
        write a new one. Returns how many keys were retired and revoked."""
        moment = time.time() if now is None else now
        self.retired_dir.mkdir(mode=0o700, exist_ok=True)
        retired = revoked = 0
        if self.current_path.exists():
            if revoke:
                self.current_path.unlink()
                revoked += 1
            else:
                os.replace(self.current_path, self.retired_dir / f"{moment:.6f}.key")
                retired += 1
        if revoke:
            for path in self.retired_dir.glob("*.key"):
                path.unlink()
                revoked += 1
        tmp = self.current_path.with_name(f".signing.key.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        os.replace(tmp, self.current_path)
        self._stamp = None
        return {"retired": retired, "revoked": revoked}
