"""Streaming ingest: a record acknowledged ends in exactly one sealed input file, across a
crash between spool and seal and a crash between seal and its record; and over HTTP, across a
SIGKILL of the gateway."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.access.accesspoint import AccessPoint
from mrbatch.access.ingest import Ingestor, split_records
from mrbatch.config.workspace import Workspace
from mrbatch.errors import UsageError
from mrbatch.gateway.app import create_app
from mrbatch.gateway.ingest import IngestService
from mrbatch.model.records import ACCEPTED, Accepted, RunStatus
from mrbatch.runtime import supervisor
from tests.conftest import Deployment, make_workspace
from tests.gateway_support import InProcess
from tests.helpers import eventually, finished

SCHEMA = {
    "type": "object",
    "required": ["id", "n"],
    "properties": {"id": {"pattern": "^r[0-9]+$"}, "n": {"type": "integer"}},
}


def _ws(root: Path, **ingest: object) -> Workspace:
    ws = make_workspace(root, ingest={"seal_records": 1000, "seal_interval": "1h", **ingest})
    (ws.root / "pipeline" / "feed.schema.json").write_text(json.dumps(SCHEMA))
    text = ws.config_path.read_text()
    text += '\n[pipelines.feed]\nprefix = "input/feed/"\nschema = "pipeline/feed.schema.json"\n'
    text += 'format = "jsonl"\n'
    ws.config_path.write_text(text)
    return Workspace.load(ws.config_path)


def _records(lo: int, hi: int) -> list[bytes]:
    return [json.dumps({"id": f"r{i}", "n": i}).encode() for i in range(lo, hi)]


def _sealed_inputs(ws: Workspace) -> dict[str, list[bytes]]:
    table = backends.open_state_table(ws, ws.regions[0])
    store = backends.open_object_store(ws, ws.regions[0])
    out: dict[str, list[bytes]] = {}
    for record in table.scan(ACCEPTED):
        entry = Accepted.from_record(record)
        out[entry.key] = store.get(entry.object_key).splitlines()
    return out


def test_split_records_keeps_quoted_line_breaks_and_refuses_binary() -> None:
    body = b'a,b\r\n"x\ny",2\n\n c,3'
    assert split_records(body, quote='"') == [b"a,b", b'"x\ny",2', b" c,3"]
    assert split_records(b'{"a": 1}\n\n{"a": 2}\n', quote=None) == [b'{"a": 1}', b'{"a": 2}']
    with pytest.raises(UsageError, match="NUL"):
        split_records(b"a\0b", quote=None)
    with pytest.raises(UsageError, match="never closed"):
        split_records(b'"open', quote='"')


def test_a_crash_before_or_after_sealing_neither_loses_nor_doubles(tmp_path: Path) -> None:
    ws = _ws(tmp_path / "ws")
    access = AccessPoint(ws)
    first = Ingestor(ws, ws.config.spec("feed"), "n1", access)
    first.append(_records(0, 5))
    first.append(_records(5, 8))
    # a write torn by a crash after the last acknowledgement: never acknowledged, dropped
    segment = next(first.dir.glob("seg-*.wal"))
    with open(segment, "ab") as handle:
        handle.write(b"\x09\x00\x00\x00garbage")
    first.close()  # the process "dies" with everything in the spool, nothing sealed

    second = Ingestor(ws, ws.config.spec("feed"), "n1", access)
    sealed = second.seal_due()
    assert [s.records for s in sealed] == [8]
    key = sealed[0].key
    assert key == "input/feed/ingest-n1-0000000001.ndjson"
    # a crash after the upload but before the segment was deleted: sealed again, same key
    # and bytes, the same accepted version (no second run)
    segment.write_bytes(b"".join(_frame(r) for r in _records(0, 8)))
    again = second.seal_due()
    assert [(s.key, s.sha256) for s in again] == [(key, sealed[0].sha256)]
    second.append(_records(8, 10))
    later = second.seal_due(everything=True)
    assert [s.key for s in later] == ["input/feed/ingest-n1-0000000002.ndjson"]
    second.close()
    inputs = _sealed_inputs(ws)
    assert sorted(inputs) == [key, later[0].key]
    everything = [r for k in sorted(inputs) for r in inputs[k]]
    assert everything == _records(0, 10)  # each record once, in order
    holder = Ingestor(ws, ws.config.spec("feed"), "n1", access)
    with pytest.raises(UsageError, match="another process"):
        Ingestor(ws, ws.config.spec("feed"), "n1", access)
    holder.close()


def _frame(record: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack("<II", len(record), zlib.crc32(record)) + record


def _post(ws: Workspace, pipeline: str, body: bytes, token: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{ws.gateway_url}/ingest/{pipeline}", data=body, method="POST"
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_ingest_over_http_survives_a_gateway_crash(tmp_path: Path) -> None:
    ws = _ws(tmp_path / "ws", seal_records=50, seal_interval="1h")
    with Deployment(ws):
        assert _post(ws, "feed", b'{"id": "r1", "n": 1}\n', None)[0] == 401
        assert _post(ws, "nope", b"{}\n", ws.token)[0] == 404
        acked: list[bytes] = []
        for lo in range(0, 120, 30):  # two segments of 60 seal by count
            status, answer = _post(ws, "feed", b"\n".join(_records(lo, lo + 30)), ws.token)
            assert status == 200 and answer["accepted"] == 30
            acked += _records(lo, lo + 30)
        eventually(lambda: len(_sealed_inputs(ws)) >= 2, 30, "two sealed files")
        # 10 more wait for the interval (an hour); the gateway dies with them spooled
        status, answer = _post(ws, "feed", b"\n".join(_records(120, 130)), ws.token)
        assert status == 200 and answer["accepted"] == 10
        acked += _records(120, 130)
        supervisor.kill(ws, supervisor.Proc("gateway", "gateway"))
        supervisor.start(ws)  # starts what is missing: the gateway, which seals the spool
        eventually(
            lambda: sum(len(v) for v in _sealed_inputs(ws).values()) == len(acked),
            30,
            "every acknowledged record sealed",
        )
        inputs = _sealed_inputs(ws)
        assert sorted(r for lines in inputs.values() for r in lines) == sorted(acked)
        for key in inputs:
            info = backends.open_object_store(ws, ws.regions[0]).head(key)
            assert info is not None
            run = finished(ws, info)
            assert run.status is RunStatus.COMPLETED, run.reason
            assert run.pipeline == "feed" and run.input_format == "jsonl"


def test_ingest_from_the_command_line(tmp_path: Path) -> None:
    ws = _ws(tmp_path / "ws", seal_records=40)
    lines = b"\n".join(_records(0, 100)) + b"\n"
    done = subprocess.run(
        [sys.executable, "-m", "mrbatch.cli.main", "ingest", "feed", "--batch", "20", "--json"],
        cwd=ws.root,
        input=lines,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["accepted"] == 100
    assert [s["records"] for s in report["sealed"]] == [40, 40, 20]
    inputs = _sealed_inputs(ws)
    assert [r for key in sorted(inputs) for r in inputs[key]] == _records(0, 100)


def test_csv_over_http_is_sealed_by_time(tmp_path: Path) -> None:
    """CSV records posted to the gateway's application (no header: the sealed file gets the
    schema's), fewer than ``seal_records``: the sealer thread seals them once the segment is
    ``seal_interval`` old, a quoted line break kept inside its record."""
    ws = make_workspace(tmp_path / "ws", ingest={"seal_records": 1000, "seal_interval": "600ms"})
    (ws.root / "pipeline" / "notes.schema.json").write_text(json.dumps(NOTES))
    text = ws.config_path.read_text()
    text += '\n[pipelines.notes]\nprefix = "input/notes/"\nschema = "pipeline/notes.schema.json"\n'
    ws.config_path.write_text(text + 'format = "csv"\n')
    ws = Workspace.load(ws.config_path)
    service = IngestService(ws, AccessPoint(ws))
    client = InProcess(create_app(ws, ingest=service))
    token = {"authorization": f"Bearer {ws.token}"}
    service.start()
    try:
        unclosed = client.request("POST", "/ingest/notes", content=b'r9,"open\n', headers=token)
        assert unclosed.status_code == 400 and "never closed" in unclosed.json()["error"]
        body = b'r1,"two\nlines"\r\nr2,plain\n\nr3,"a ""quoted"" word"\n'
        posted = time.monotonic()
        answer = client.request("POST", "/ingest/notes", content=body, headers=token)
        assert answer.status_code == 200 and answer.json()["accepted"] == 3, answer.text
        sealed = eventually(lambda: _sealed_bytes(ws), 30, "the records sealed by time")
        assert time.monotonic() - posted >= 0.6  # not before the interval: 3 of 1,000 records
    finally:
        service.stop()
    assert list(sealed) == ["input/notes/ingest-gateway-0000000001.csv"]
    rows = list(csv.DictReader(io.StringIO(sealed["input/notes/ingest-gateway-0000000001.csv"])))
    assert rows == [
        {"id": "r1", "note": "two\nlines"},
        {"id": "r2", "note": "plain"},
        {"id": "r3", "note": 'a "quoted" word'},
    ]


NOTES = {"type": "object", "required": ["id"], "properties": {"id": {}, "note": {}}}


def _sealed_bytes(ws: Workspace) -> dict[str, str]:
    table = backends.open_state_table(ws, ws.regions[0])
    store = backends.open_object_store(ws, ws.regions[0])
    entries = [Accepted.from_record(r) for r in table.scan(ACCEPTED)]
    return {e.key: store.get(e.object_key).decode() for e in entries}
