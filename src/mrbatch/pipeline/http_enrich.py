"""Enrichment from an HTTP API: many keys a call, retried with backoff, the answers kept per chunk.

Protocol: ``POST <url>`` with ``{"keys": ["k1", "k2", ...]}`` (at most ``batch`` keys) and
``Content-Type: application/json``; the answer is ``{"results": {"k1": {"field": value, ...},
"k2": null, ...}}``. A key that is absent or null has no data: its rows are rejected with a
reason, as rows without reference data are. Values become text exactly as the JSON wrote them.

A connection error, a timeout, a 5xx, 408 or 429 is retried with backoff up to ``attempts``
times, then the chunk fails for now (TaskError: the orchestrator retries the chunk). Any other
4xx is a refusal that retrying cannot change: the run fails with the API's answer as reason.

Answers are kept for the run. A key is asked once per run: the first answer recorded for it
(``SharedAnswers``: one state record per key, created once) is the one every chunk of the run
uses, so one output never joins a key to two different answers, even when the API changes its
mind while the run's chunks run side by side. The answers a chunk used are also written to
``runs/<run-id>/api/<chunk>.json`` before the chunk's outputs, and read back first when the
chunk runs again (after a crash, a failover, a redrive): a chunk computed twice gives the same
bytes whatever happened to the run's records meanwhile.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

from ..config.pipelines import ApiEnrichmentConfig
from ..errors import NotFoundError, ReferenceDataError, TaskError
from ..ports import ObjectStore
from ..retry import Backoff
from .jsonl import as_text, loads_exact

__all__ = ["Answer", "ApiClient", "DurableAnswers", "SharedAnswers"]

Answer = dict[str, str | None] | None  # a key's fields, or None: the API has no data for it

_RETRY_STATUS = {408, 429}


class ApiClient:
    """Looks keys up in batches, with retries."""

    def __init__(
        self, config: ApiEnrichmentConfig, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.config = config
        self.sleep = sleep
        self.backoff = Backoff(base=config.retry_backoff, cap=30.0)
        self.calls = 0

    def fetch(self, keys: list[str]) -> dict[str, dict[str, str | None] | None]:
        out: dict[str, dict[str, str | None] | None] = {}
        size = self.config.batch
        for start in range(0, len(keys), size):
            out.update(self._batch(keys[start : start + size]))
        return out

    def _batch(self, keys: list[str]) -> dict[str, dict[str, str | None] | None]:
        url = self.config.url
        body = json.dumps({"keys": keys}, ensure_ascii=False).encode("utf-8")
        last = ""
        for attempt in range(1, self.config.attempts + 1):
            if attempt > 1:
                self.sleep(self.backoff.delay(attempt - 1))
            request = urllib.request.Request(url, data=body, method="POST")
            request.add_header("Content-Type", "application/json")
            for name, value in self.config.headers.items():
                request.add_header(name, value)
            self.calls += 1
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode("utf-8", "replace")
                if exc.code >= 500 or exc.code in _RETRY_STATUS:
                    last = f"{url} answered {exc.code}"
                    continue
                raise ReferenceDataError(
                    f"enrichment API {url} refused the lookup: {exc.code} {detail}".strip(),
                    hint="fix the API or the pipeline's api settings, then `mrbatch redrive`",
                ) from None
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = f"{url} cannot be reached: {getattr(exc, 'reason', exc)}"
                continue
            try:
                return _results(raw, keys)
            except ValueError as exc:
                last = f"{url} answered something that is not a lookup result: {exc}"
        raise TaskError(
            f"enrichment API: {last} (after {self.config.attempts} attempts)",
            hint="the chunk is tried again; check the API",
        )


def _results(raw: bytes, keys: list[str]) -> dict[str, dict[str, str | None] | None]:
    doc = loads_exact(raw.decode("utf-8"))
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, dict):
        raise ValueError('expected {"results": {key: {...} | null}}')
    out: dict[str, dict[str, str | None] | None] = {}
    for key in keys:
        value = results.get(key)
        if isinstance(value, dict):
            out[key] = {str(k): as_text(v) for k, v in value.items()}
        else:
            out[key] = None
    return out


class SharedAnswers(Protocol):
    """The answers of one run, shared by its chunks wherever they run."""

    def known(self, keys: list[str]) -> dict[str, Answer]:
        """The answers already recorded for any of ``keys`` (absent keys: not asked yet)."""
        ...

    def settle(self, fetched: dict[str, Answer]) -> dict[str, Answer]:
        """Record ``fetched`` where no answer is recorded yet; returns the recorded answer of
        each key: the first one recorded wins, so a chunk that lost the race uses the winner's."""
        ...


class DurableAnswers:
    """One chunk's view of the API: the answers already kept for the chunk (object ``key``)
    first, then the run's (``shared``), then the API for the rest; everything the chunk used
    is written back before its outputs are."""

    def __init__(
        self,
        client: ApiClient,
        store: ObjectStore,
        key: str,
        *,
        epoch: int,
        shared: SharedAnswers | None = None,
    ) -> None:
        self.client, self.store, self.object_key, self.epoch = client, store, key, epoch
        self.shared = shared
        self.key = client.config.key
        self.columns = dict(client.config.columns)

    def answers(self, keys: list[str]) -> dict[str, dict[str, str | None] | None]:
        kept: dict[str, Any] = {}
        try:
            kept = json.loads(self.store.get(self.object_key))["answers"]
        except NotFoundError:
            pass
        missing = [k for k in keys if k not in kept]
        if missing:
            if self.shared is not None:
                kept.update(self.shared.known(missing))
            ask = [k for k in missing if k not in kept]
            if ask:
                fetched = self.client.fetch(ask)
                kept.update(self.shared.settle(fetched) if self.shared is not None else fetched)
            doc = {"url": self.client.config.url, "answers": kept}
            data = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode("utf-8")
            self.store.put(self.object_key, data, epoch=self.epoch)
        return {k: kept.get(k) for k in keys}
