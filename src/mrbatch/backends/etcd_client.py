"""A small client for etcd's v3 JSON API (the gRPC gateway every etcd >= 3.4 serves on its client
port), over several endpoints.

It uses etcd3gw for the transport: one ``Etcd3Client`` per member (a requests session and the
mapping of the gateway's HTTP errors to exceptions), pure Python, no gRPC or protobuf (the
reason python-etcd3 no longer imports). etcd3gw talks to one host, so this module adds what a
cluster needs: a call tries the members in turn until one answers within the call's deadline;
an error says whether the cluster is unreachable or has no quorum (from the members' own
``/health``); a write whose answer was lost is reported as ambiguous, never silently retried
on another member. Payloads are written here in the API's own terms: keys and values base64,
64-bit integers as strings (a field at its default value is omitted in answers, so a failed
txn has no ``succeeded``), ``create_revision: "0"`` explicit for create-if-absent.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as gw_errors
from etcd3gw.client import Etcd3Client

from ..errors import MrbatchError, UnavailableError

__all__ = ["AmbiguousWrite", "EtcdClient", "KeyValue", "b64", "prefix_end", "unb64"]

# What etcd3gw raises for a member that did not answer (connection refused or lost, a
# timeout, HTTP 503/408/504: "no leader", "request timed out").
_TRANSPORT = (gw_errors.ConnectionFailedError, gw_errors.ConnectionTimeoutError)


def b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> KeyValue:
        return cls(
            key=unb64(raw["key"]).decode("utf-8"),
            value=unb64(raw.get("value", "")),
            mod_revision=int(raw.get("mod_revision", 0)),
            create_revision=int(raw.get("create_revision", 0)),
            lease=int(raw.get("lease", 0)),
        )


class AmbiguousWrite(UnavailableError):
    """A write was sent but its answer was lost: it may have been applied."""

    code = "unavailable_ambiguous"


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    raw = bytearray(prefix.encode("utf-8"))
    raw[-1] += 1
    return b64(bytes(raw))


class EtcdClient:
    """Calls against a cluster given by its client URLs. Thread-safe."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float) -> None:
        if not endpoints:
            raise MrbatchError("no etcd endpoints configured", hint="set etcd.endpoints")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._clients: list[Etcd3Client] = []
        for url in self.endpoints:
            parts = urlsplit(url)
            session = requests.Session()
            session.trust_env = False  # never route the control plane through a proxy
            self._clients.append(
                Etcd3Client(
                    host=parts.hostname or "127.0.0.1",
                    port=parts.port or 2379,
                    protocol=parts.scheme or "http",
                    api_path="/v3/",  # etcd >= 3.4; never /v3beta
                    session=session,
                )
            )
        self._member_locks = [threading.Lock() for _ in self._clients]
        self._current = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ calls
    def call(self, path: str, payload: dict[str, Any], *, write: bool = False) -> dict[str, Any]:
        """POST ``payload`` to ``/v3/<path>`` on the first member that answers in time.

        A member that refuses the connection, or answers that it has no leader, is skipped at
        once. One that times out (or answers "request timed out") is skipped too, unless the
        call is a ``write``: then the write may have been applied and AmbiguousWrite is
        raised. UnavailableError when no member answered before the deadline, saying whether
        a quorum is missing."""
        deadline = time.monotonic() + self.timeout
        errors: dict[str, str] = {}
        with self._lock:
            start = self._current
        count = len(self._clients)
        for step in range(count):
            index = (start + step) % count
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            client = self._clients[index]
            try:
                with self._member_locks[index]:
                    client.timeout = remaining  # etcd3gw passes it to requests
                    result: dict[str, Any] = client.post(client.get_url(path), json=payload)
            except _TRANSPORT as exc:
                why = _reason(exc)
                not_applied = why in ("connection refused", "no leader")
                if write and not not_applied:
                    raise self._ambiguous(index, why) from exc
                errors[self.endpoints[index]] = why
                with self._lock:
                    self._current = (index + 1) % count
                continue
            except gw_errors.InternalServerError as exc:
                if write:
                    raise self._ambiguous(index, _reason(exc)) from exc
                errors[self.endpoints[index]] = _reason(exc)
                continue
            except gw_errors.Etcd3Exception as exc:
                raise MrbatchError(f"etcd refused a request to /v3/{path}: {_reason(exc)}") from exc
            with self._lock:
                self._current = index
            return result
        raise self.unavailable(errors)

    def range(self, key: str, *, prefix: bool = False) -> list[KeyValue]:
        """The key (or every key under ``prefix``), read linearizably (through a quorum)."""
        payload: dict[str, Any] = {"key": b64(key)}
        if prefix:
            payload["range_end"] = prefix_end(key)
        answer = self.call("kv/range", payload)
        return [KeyValue.parse(kv) for kv in answer.get("kvs", [])]

    def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
        *,
        write: bool = True,
    ) -> tuple[bool, list[dict[str, Any]]]:
        """One transaction: (succeeded, the responses of the branch taken)."""
        payload: dict[str, Any] = {"compare": compare, "success": success}
        if failure:
            payload["failure"] = failure
        answer = self.call("kv/txn", payload, write=write)
        return bool(answer.get("succeeded", False)), list(answer.get("responses", []))

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds; etcd may raise it to its minimum)."""
        answer = self.call("lease/grant", {"TTL": str(ttl), "ID": "0"})
        if answer.get("error"):
            raise UnavailableError(f"etcd did not grant a lease: {answer['error']}")
        return int(answer["ID"]), int(answer.get("TTL", ttl))

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; its TTL now, or 0 when it has expired (it is gone)."""
        answer = self.call("lease/keepalive", {"ID": str(lease)})
        result = answer.get("result", answer)
        if "error" in answer and "result" not in answer:
            raise UnavailableError(f"etcd did not renew the lease: {answer['error']}")
        return int(result.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.call("kv/lease/revoke", {"ID": str(lease)}, write=True)

    # ------------------------------------------------------------------ errors
    def healthy_members(self) -> tuple[int, int]:
        """(members that answer at all, members that report a healthy cluster), probed now."""
        answering = healthy = 0
        for client in self._clients:
            try:
                response = client.session.get(client.base_url + "/health", timeout=0.3)
            except requests.exceptions.RequestException:
                continue
            answering += 1
            try:
                healthy += response.json().get("health") == "true"
            except ValueError:
                pass
        return answering, healthy

    def unavailable(self, errors: dict[str, str]) -> UnavailableError:
        total = len(self.endpoints)
        majority = total // 2 + 1
        answering, healthy = self.healthy_members()
        detail = "; ".join(f"{url}: {why}" for url, why in errors.items())
        if answering == 0:
            return UnavailableError(
                f"etcd is unreachable: none of its {total} member(s) answer ({detail})",
                hint=f"check the members listed in etcd.endpoints: {', '.join(self.endpoints)}",
            )
        if answering >= majority and healthy == 0:
            return UnavailableError(
                f"etcd has no leader: {answering} of {total} members answer, none of them with"
                " a leader (an election may be under way)",
                hint="retry in a moment; if it lasts, check the members' logs",
            )
        if answering < majority:
            return UnavailableError(
                f"etcd has no quorum: {answering} of {total} members answer and {majority}"
                " are needed",
                hint="nothing was changed; bring members back (meanwhile every region stops"
                " publishing and mailing, see docs/DESIGN.md)",
            )
        return UnavailableError(
            f"etcd did not answer within {self.timeout:g}s ({answering} of {total} members"
            f" answer; a leader election may be under way): {detail}",
            hint="retry in a moment",
        )

    def _ambiguous(self, index: int, why: str) -> AmbiguousWrite:
        with self._lock:
            self._current = (index + 1) % len(self._clients)
        return AmbiguousWrite(
            f"etcd member {self.endpoints[index]} did not confirm a write: {why}",
            hint="it may or may not have been applied; `mrbatch status` shows the routing",
        )


def _reason(exc: gw_errors.Etcd3Exception) -> str:
    """A short reason from etcd3gw's exception: its detail text is the gateway's JSON answer
    (or the requests error)."""
    text = str(exc.detail_text or exc)
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "no leader" in text:
        return "no leader"
    if "timed out" in text.lower() or isinstance(exc, gw_errors.ConnectionTimeoutError):
        return "timed out"
    try:
        body = json.loads(text)
    except ValueError:
        return text if len(text) < 120 else text[:117] + "..."
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(body.get("message") or error or text) if isinstance(body, dict) else text
