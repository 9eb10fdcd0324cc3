"""Traces: with [tracing] otlp_endpoint set, one OpenTelemetry trace per run (claim, split, each
chunk, merge, publish, notify) and one per plan execution reach an OTLP/HTTP receiver (a tiny
one started here, on 127.0.0.1); without it, opentelemetry is never imported."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from mrbatch.config.initialize import sample_bytes
from mrbatch.recovery.runbook import Runbook
from tests.conftest import Deployment, make_workspace
from tests.helpers import eventually, finished, put

SMALL = b"\n".join(sample_bytes("orders.csv").split(b"\n")[:901]) + b"\n"


class _Receiver:
    """Collects the spans of every OTLP/HTTP export: name -> list of (trace id, parent)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, bytes, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            receiver.spans.append((span.name, span.trace_id, span.parent_span_id))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def names(self, trace_id: bytes) -> list[str]:
        return sorted(name for name, tid, _parent in self.spans if tid == trace_id)


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def _trace_id(ident: str) -> bytes:
    return hashlib.sha256(ident.encode()).digest()[:16]


def test_one_trace_per_run_and_per_plan(tmp_path: Path, receiver: _Receiver) -> None:
    ws = make_workspace(
        tmp_path / "ws",
        chunk_rows=300,
        failover={"min_switch_interval": "1s", "max_wait": "5s"},
        tracing={"otlp_endpoint": receiver.url},
        reports={"settle": "5s"},
    )
    with Deployment(ws):
        info = put(ws, "input/traced.csv", SMALL)
        run = finished(ws, info)
        wanted = _trace_id(f"run:{run.run_id}")
        names = eventually(
            lambda: (n := receiver.names(wanted)) and "notify" in n and n,
            30,
            "the run's trace",
        )
        assert {"claim", "split", "process", "merge", "publish", "notify"} <= set(names)
        assert f"run {info.key}" in names
        assert sorted(n for n in names if n.startswith("chunk ")) == [
            f"chunk {i}" for i in range(3)
        ]
        parents = {p for name, tid, p in receiver.spans if tid == wanted}
        assert len([s for s in receiver.spans if s[1] == wanted and not s[2]]) == 1  # one root
        assert parents  # the rest hang under it

        execution = Runbook(ws, "failover", ws.regions[1], yes=True, force=True).execute()
        plan_names = receiver.names(_trace_id(f"plan:{execution.id}"))
        assert f"plan failover to {ws.regions[1]}" in plan_names
        assert {"readiness", "approval", "rpo-gate", "fence", "activate"} <= set(plan_names)


def test_nothing_is_imported_unless_configured(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import mrbatch.cli.main, mrbatch.engine.region, mrbatch.recovery.drill\n"
        "from mrbatch.config.workspace import Workspace\n"
        "from mrbatch.observe.tracing import trace_plan, tracer_for\n"
        f"ws = Workspace.load(Path({str(ws.config_path)!r}))\n"
        "assert tracer_for(ws) is None\n"
        "trace_plan(ws, object())\n"
        "core = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not core, core\n"
        # FastAPI imports the OpenTelemetry *API* on its own when it is installed; the SDK and
        # the exporter are ours alone, and stay out.
        "from mrbatch.gateway.app import create_app\n"
        "create_app(ws)\n"
        "ours = [m for m in sys.modules if m.startswith(('opentelemetry.sdk',"
        " 'opentelemetry.exporter'))]\n"
        "assert not ours, ours\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
