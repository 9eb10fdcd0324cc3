"""moto's server mode, answering one request at a time: ``python tests/moto_serial.py HOST PORT``.

This is what ``moto_server`` runs (moto's WSGI application and request handler under werkzeug,
one thread per connection), with one difference: a lock around each request. moto checks a
conditional write's condition and then makes the write as two steps of Python that another
request's thread can run between (PutObject with If-None-Match, TransactWriteItems), so under
load two writers could both win a condition that S3 or DynamoDB lets only one win. mrbatch's
change feeds rely on exactly that (a position is taken by one writer), so the tests serve moto
the way the real services behave: atomically, request by request.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def serialized(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    lock = threading.Lock()

    def one_at_a_time(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            answer = app(environ, start_response)
            try:
                return [b"".join(answer)]  # the whole answer is made inside the lock
            finally:
                close = getattr(answer, "close", None)
                if close is not None:
                    close()

    return one_at_a_time


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        host,
        port,
        serialized(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
