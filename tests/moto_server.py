"""moto's server mode as the tests' S3 and DynamoDB endpoint: one server per test session on
127.0.0.1 and a free port, started on first use, reset between tests (``POST
/moto-api/reset``) and stopped by its pid when the session ends (``tests/conftest.py``).

What moto does not do, and the tests therefore do not rely on: it never replicates (no
Cross-Region Replication, no global-table replicas), does not check presigned URLs' signatures
or expiry (link security is tested on the gateway), keeps everything in memory (lost when it
restarts), ignores If-Match / If-None-Match on CopyObject and If-Match on
CompleteMultipartUpload (the conditional PutObject paths are exercised), copies a whole table
for every TransactWriteItems (so its transactions slow down as a table grows), and does not make
a conditional write atomic against concurrent requests (so the server answers one request at a
time: tests/moto_serial.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.errors import MrbatchError
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import CHUNK, ChunkRun, ChunkStatus, FileRun, run_pk
from mrbatch.ports import ObjectInfo
from mrbatch.proof.verify import verify
from tests.conftest import free_port, make_workspace

# Fake credentials for the standard chain; every process the tests start inherits them.
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class MotoServer:
    def __init__(self, log: Path | None = None) -> None:
        os.environ.update(TEST_ENV)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        sink = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        # moto's server mode, one request at a time (tests/moto_serial.py says why).
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("moto_serial.py")),
                "127.0.0.1",
                str(self.port),
            ],
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
        if log is not None:
            sink.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def reset(self) -> None:
        """Forget every bucket, object and table."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_shared: MotoServer | None = None


def shared() -> MotoServer:
    """The session's server (started now if it is not running)."""
    global _shared
    if _shared is None or _shared.proc.poll() is not None:
        _shared = MotoServer()
    return _shared


def stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


def aws_workspace(root: Path, url: str, **overrides: object) -> Workspace:
    """A workspace on S3 + DynamoDB at ``url`` (every region on that one endpoint)."""
    init = {"object_store": "s3", "state_table": "dynamodb", "endpoint_url": url}
    init.update(overrides.pop("init", {}))  # type: ignore[call-overload]
    return make_workspace(root, init=init, **overrides)


# ------------------------------------------------------------------ deployments on the server
# Every idle loop pass costs requests on S3 and DynamoDB: poll less often than on disk.
QUIET = {
    "timing": {"poll_interval": "300ms"},
    "replication": {"interval": "300ms"},
    "failover": {"min_switch_interval": "1s", "max_wait": "20s"},
}


def fresh_workspace(root: Path, **overrides: Any) -> Workspace:
    """An S3 + DynamoDB workspace on the session's server, emptied first."""
    server = shared()
    server.reset()
    ws = aws_workspace(root, server.url, **{**QUIET, **overrides})
    assert isinstance(ws, Workspace)
    return ws


def eventually(check: Callable[[], object], timeout: float, what: str) -> None:
    """Like tests.helpers.eventually, polling four times a second (each poll is requests)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def finished(ws: Workspace, info: ObjectInfo, timeout: float = 120.0) -> FileRun:
    """The run of ``info`` once terminal, read from each region's table twice a second (the
    shared helper's scans twenty times a second would load the server more than the
    deployment does)."""
    pk = run_pk(run_id_for(info.key, info.sha256))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for region in ws.regions:
            with contextlib.suppress(MrbatchError):
                record = backends.open_state_table(ws, region).get(pk)
                if record is not None and FileRun.from_record(record).status.terminal:
                    return FileRun.from_record(record)
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for the run of {info.key}")


def clean(ws: Workspace) -> None:
    """``verify`` finds nothing lost, doubled, pending or diverged."""
    report = verify(ws, wait=60)
    assert report.ok and report.counts["pending"] == 0, report.to_dict()["violations"]


def done_chunks(ws: Workspace, region: str) -> int:
    table = backends.open_state_table(ws, region)
    return sum(ChunkRun.from_record(r).status is ChunkStatus.DONE for r in table.scan(CHUNK))
