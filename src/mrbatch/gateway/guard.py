"""What every request to the gateway passes before any route sees it.

- Its path is valid UTF-8 once percent-decoded: a malformed byte would otherwise be mapped to
  U+FFFD, and two different URLs would name one object (400).
- Its ``Host`` is one the gateway answers to: localhost, the bound host, the host of
  ``gateway.public_url`` and ``gateway.allowed_hosts``. A page elsewhere that rebinds its own
  DNS name to 127.0.0.1 cannot read the API or the dashboard from the user's browser (400).
- Bound to an address other than loopback, the read endpoints (the dashboard, ``/api/*``,
  ``/metrics``) need the token too, as a bearer or as the cookie that ``/?token=T`` sets;
  objects keep their own rules (a presigned link or the token), and ``/healthz`` stays open.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ..config.workspace import Workspace

__all__ = ["TOKEN_COOKIE", "RequestGuard", "is_loopback"]

TOKEN_COOKIE = "mrbatch_token"
_ALWAYS = {"localhost", "127.0.0.1", "::1"}
_OPEN_PATHS = ("/objects/", "/healthz")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """``example.com:8740`` -> ``example.com``; ``[::1]:8740`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class RequestGuard:
    def __init__(self, app: ASGIApp, ws: Workspace) -> None:
        self.app = app
        gateway = ws.config.gateway
        self.hosts = set(_ALWAYS) | {h.lower() for h in gateway.allowed_hosts}
        if gateway.host not in ("0.0.0.0", "::", ""):
            self.hosts.add(gateway.host.lower().strip("[]"))
        if gateway.public_url:
            self.hosts.add((urlsplit(gateway.public_url).hostname or "").lower())
        self.reads_need_token = not is_loopback(gateway.host)
        self.token = ws.token.encode() if self.reads_need_token else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        try:
            unquote_to_bytes(raw_path.split(b"?", 1)[0]).decode("utf-8")
        except UnicodeDecodeError:
            await _refuse(send, 400, "the URL path is not valid UTF-8 once percent-decoded")
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = _host_name(headers.get("host", ""))
        if host not in self.hosts:
            await _refuse(
                send,
                400,
                f"host {host or '(none)'!r} is not one this gateway answers to",
                hint="add it to gateway.allowed_hosts in mrbatch.toml (or set gateway.public_url)",
            )
            return
        path = scope["path"]
        if self.reads_need_token and not path.startswith(_OPEN_PATHS):
            if path == "/" and self._token_in_query(scope):
                await _set_cookie_and_redirect(send, self.token.decode())
                return
            if not self._authorized(headers):
                await _refuse(
                    send,
                    401,
                    "this gateway is bound off loopback: reads need the token",
                    hint="send `Authorization: Bearer <mrbatch gateway token>`, or open"
                    " /?token=<token> once in a browser",
                )
                return
        await self.app(scope, receive, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return hmac.compare_digest(credentials.strip().encode(), self.token)
        cookie = SimpleCookie(headers.get("cookie", ""))
        if TOKEN_COOKIE in cookie:
            return hmac.compare_digest(cookie[TOKEN_COOKIE].value.encode(), self.token)
        return False

    def _token_in_query(self, scope: Scope) -> bool:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("token") or [""])[0].encode()
        return bool(given) and hmac.compare_digest(given, self.token)


async def _refuse(send: Send, status: int, message: str, hint: str | None = None) -> None:
    body = {"error": message} | ({"hint": hint} if hint else {})
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="mrbatch"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _set_cookie_and_redirect(send: Send, token: str) -> None:
    cookie = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    headers = [(b"location", b"/"), (b"set-cookie", cookie.encode()), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
