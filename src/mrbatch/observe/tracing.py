"""OpenTelemetry traces, optional: one trace per run (claim, split, each chunk, merge, publish,
notify) and one per plan execution (each step), exported over OTLP/HTTP when
``[tracing] otlp_endpoint`` is set — and nothing otherwise: without it, opentelemetry is never
imported, and without the ``otel`` extra installed a configured endpoint logs one warning.

A run's steps happen in several processes (and after a failover in several regions), so the
trace is written once, from what the run recorded, by the process that makes it terminal: its
trace id is derived from the run id (the same run always gives the same trace), each stage a
span between the history entries that bound it, each chunk a span of its own from the times
its task recorded, and every history entry (region, epoch, takeovers) an event of the root span.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.workspace import Workspace
    from ..model.records import ChunkRun, FileRun

__all__ = ["reset", "trace_plan", "trace_run", "tracer_for"]

log = logging.getLogger("mrbatch.tracing")
_lock = threading.Lock()
_providers: dict[tuple[str, str], Any] = {}
_warned: set[str] = set()
_STAGES = (  # span name, history status that starts it, status that ends it
    ("split", "CLAIMED", "SPLIT"),
    ("publish", "MERGED", "PUBLISHED"),
    ("notify", "PUBLISHED", "COMPLETED"),
)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _ids(name: str) -> tuple[int, int]:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


def tracer_for(ws: Workspace) -> Any | None:
    """A tracer exporting to the configured endpoint, or None (not configured, or the
    ``otel`` extra missing). One provider per endpoint per process."""
    settings = ws.config.tracing
    endpoint = settings.otlp_endpoint
    if not endpoint:
        return None
    key = (endpoint, settings.service_name)
    with _lock:
        if key in _providers:
            return _providers[key][0]
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        except ImportError as exc:
            if endpoint not in _warned:
                _warned.add(endpoint)
                log.warning(
                    "tracing.otlp_endpoint is set but opentelemetry is not installed (%s);"
                    " install the extra: pip install 'mrbatch[otel]'",
                    exc,
                )
            return None

        class _Ids(RandomIdGenerator):
            """Random ids, except the root span's, which come from the run or execution id."""

            forced = threading.local()

            def generate_trace_id(self) -> int:
                value = getattr(self.forced, "trace", None)
                return int(value) if value else super().generate_trace_id()

            def generate_span_id(self) -> int:
                value = getattr(self.forced, "span", None)
                self.forced.span = None
                return int(value) if value else super().generate_span_id()

        ids = _Ids()
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}), id_generator=ids
        )
        exporter = OTLPSpanExporter(
            endpoint=f"{endpoint}/v1/traces", timeout=int(max(1, settings.export_timeout))
        )
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        tracer = provider.get_tracer("mrbatch")
        _providers[key] = (tracer, provider, ids)
        return tracer


def _parts(ws: Workspace) -> tuple[Any, Any, Any] | None:
    if tracer_for(ws) is None:
        return None
    settings = ws.config.tracing
    return _providers[(settings.otlp_endpoint or "", settings.service_name)]  # type: ignore[no-any-return]


def _root(parts: tuple[Any, Any, Any], name: str, ident: str, start: float, attrs: dict) -> Any:
    tracer, _provider, ids = parts
    trace_id, span_id = _ids(ident)
    ids.forced.trace, ids.forced.span = trace_id, span_id
    try:
        return tracer.start_span(name, start_time=_ns(start), attributes=attrs)
    finally:
        ids.forced.trace = ids.forced.span = None


def _child(parts: tuple[Any, Any, Any], parent: Any, name: str, start: float, end: float,
           attrs: dict[str, Any] | None = None) -> Any:  # fmt: skip
    from opentelemetry import trace

    span = parts[0].start_span(
        name,
        context=trace.set_span_in_context(parent),
        start_time=_ns(start),
        attributes={k: v for k, v in (attrs or {}).items() if v is not None},
    )
    span.end(end_time=_ns(max(start, end)))
    return span


def _flush(parts: tuple[Any, Any, Any], ws: Workspace) -> None:
    parts[1].force_flush(int(ws.config.tracing.export_timeout * 1000))


def trace_run(ws: Workspace, run: FileRun, chunks: Iterable[ChunkRun] = ()) -> None:
    """Export the trace of a run that just became terminal (a no-op unless configured)."""
    parts = _parts(ws)
    if parts is None:
        return
    try:
        _trace_run(parts, run, list(chunks))
    except Exception:  # a trace must never cost a run
        log.exception("could not trace run %s", run.run_id)


def _trace_run(parts: tuple[Any, Any, Any], run: FileRun, chunks: list[ChunkRun]) -> None:
    history = run.history
    last: dict[str, float] = {}
    for entry in history:
        last[str(entry.get("status"))] = float(entry["at"])
    start = min([run.accepted_at or run.claimed_at, run.claimed_at])
    end = float(history[-1]["at"]) if history else run.updated_at
    root = _root(
        parts,
        f"run {run.input_key}",
        f"run:{run.run_id}",
        start,
        {
            "mrbatch.run_id": run.run_id,
            "mrbatch.input_key": run.input_key,
            "mrbatch.status": str(run.status),
            "mrbatch.region": run.region,
            "mrbatch.epoch": run.epoch,
            "mrbatch.rows_in": run.rows_in or 0,
            "mrbatch.rows_rejected": run.rows_rejected or 0,
            "mrbatch.redriven": run.redriven,
        },
    )
    for entry in history:
        attrs = {k: entry[k] for k in ("region", "epoch", "note") if entry.get(k) is not None}
        root.add_event(str(entry.get("status")), attributes=attrs, timestamp=_ns(entry["at"]))
    claimed = last.get("CLAIMED", run.claimed_at)
    _child(parts, root, "claim", start, claimed, {"mrbatch.region": run.region})
    for name, first, then in _STAGES:
        if first in last and then in last:
            _child(parts, root, name, last[first], last[then])
    if "SPLIT" not in last or "MERGED" not in last:
        root.end(end_time=_ns(max(start, end)))
        return
    # process: the chunks (each a span of its own) and the merge that streams behind them
    process = _child(parts, root, "process", last["SPLIT"], last["MERGED"])
    done = [c.ended_at for c in chunks if c.ended_at is not None]
    merge_from = max(done) if done else last.get("PROCESSING", last["SPLIT"])
    _child(parts, process, "merge", min(merge_from, last["MERGED"]), last["MERGED"])
    for chunk in sorted(chunks, key=lambda c: c.index):
        if chunk.started_at is not None and chunk.ended_at is not None:
            _child(
                parts,
                process,
                f"chunk {chunk.index}",
                chunk.started_at,
                chunk.ended_at,
                {"mrbatch.chunk": chunk.index, "mrbatch.rows_in": chunk.rows_in,
                 "mrbatch.region": chunk.region, "mrbatch.attempts": chunk.attempts},
            )  # fmt: skip
    if run.reason:
        root.set_attribute("mrbatch.reason", run.reason)
    root.end(end_time=_ns(max(start, end)))


def trace_plan(ws: Workspace, execution: Any) -> None:
    """Export the trace of a finished plan execution, one span per step (a no-op unless
    configured); waits (bounded) for the export, as the command may exit right after."""
    parts = _parts(ws)
    if parts is None:
        return
    try:
        e = execution
        root = _root(
            parts,
            f"plan {e.plan} to {e.target}",
            f"plan:{e.id}",
            e.started,
            {"mrbatch.execution": e.id, "mrbatch.outcome": e.outcome, "mrbatch.mode": e.mode,
             "mrbatch.source": e.source or "", "mrbatch.target": e.target,
             "mrbatch.trigger": e.trigger, "mrbatch.drill": e.drill or ""},
        )  # fmt: skip

        def add(parent: Any, step: Any) -> None:
            span = _child(
                parts, parent, step.name, step.started, step.ended or step.started,
                {"mrbatch.outcome": step.outcome, "mrbatch.message": step.message[:500]},
            )  # fmt: skip
            for child in step.children:
                add(span, child)

        for step in e.steps:
            add(root, step)
        root.end(end_time=_ns(e.ended or e.started))
        _flush(parts, ws)
    except Exception:
        log.exception("could not trace plan %s", getattr(execution, "id", "?"))


def reset() -> None:
    """Flush and forget every provider (tests; a process about to exit)."""
    with _lock:
        for _tracer, provider, _ids in _providers.values():
            provider.shutdown()
        _providers.clear()
