"""moto's server mode as the tests' S3 and DynamoDB endpoint: one server per test session on
127.0.0.1 and a free port, started on first use, reset between tests (``POST
/moto-api/reset``) and stopped by its pid when the session ends (``tests/conftest.py``).

What moto does not do, and the tests therefore do not rely on: it never replicates (no
Cross-Region Replication, no global-table replicas), does not check presigned URLs' signatures
or expiry (link security is tested on the gateway), keeps everything in memory (lost when it
restarts), ignores If-Match / If-None-Match on CopyObject and If-Match on
CompleteMultipartUpload (the conditional PutObject paths are exercised), and copies a whole
table for every TransactWriteItems (so its transactions slow down as a table grows).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
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


def aws_workspace(root: Path, url: str, **overrides: object) -> object:
    """A workspace on S3 + DynamoDB at ``url`` (every region on that one endpoint)."""
    init = {"object_store": "s3", "state_table": "dynamodb", "endpoint_url": url}
    init.update(overrides.pop("init", {}))  # type: ignore[arg-type]
    return make_workspace(root, init=init, **overrides)
