"""The webhook sender: one JSON POST per completed run to a pipeline's URL.

``Idempotency-Key`` is the run id, so a receiver can drop the rare repeat (a crash between its
answer and the record of the delivery sends it again). 2xx is delivered; a connection error, a
timeout, 408, 429 or 5xx raises UnavailableError (the orchestrator retries with backoff); any
other answer is a refusal (MrbatchError), which fails the run with the receiver's answer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import MrbatchError, UnavailableError

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["HttpWebhook", "open_webhook"]


class HttpWebhook:
    def post(
        self,
        url: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str,
        headers: Mapping[str, str],
        timeout: float,
    ) -> int:
        data = json.dumps(body, sort_keys=True).encode("utf-8")
        request = urllib.request.Request(url, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("Idempotency-Key", idempotency_key)
        request.add_header("User-Agent", "mrbatch-webhook")
        for name, value in headers.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace").strip()
            if exc.code >= 500 or exc.code in (408, 429):
                raise UnavailableError(f"webhook {url} answered {exc.code} {detail}") from None
            raise MrbatchError(
                f"webhook {url} refused the notification: {exc.code} {detail}".strip()
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UnavailableError(f"webhook {url} cannot be reached: {reason}") from None


def open_webhook(_ws: Workspace) -> HttpWebhook:
    return HttpWebhook()
