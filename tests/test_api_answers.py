"""Enrichment-API answers are kept for the run: each key is asked once per run, and every chunk
of the run joins a key to the same answer, even when the API changes its answer between calls
and the run's chunks ask side by side. Against a real HTTP API (a local server whose answer
changes with every call) and the workspace's own state table and object store."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.pipelines import ApiEnrichmentConfig
from mrbatch.config.workspace import Workspace
from mrbatch.engine.answers import RunAnswers
from mrbatch.model.records import ANSWER
from mrbatch.pipeline.http_enrich import ApiClient, DurableAnswers
from tests.conftest import make_workspace


class ChangingApi:
    """Answers each key with the number of the call that asked it: no two calls agree."""

    def __init__(self, delay: float = 0.05) -> None:
        self.asked: Counter[str] = Counter()
        self.calls = 0
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                keys = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["keys"]
                with api.lock:
                    api.calls += 1
                    call = api.calls
                    api.asked.update(keys)
                time.sleep(delay)  # long enough for chunks that start together to overlap
                answer = {"results": {k: {"rate": f"{call}"} for k in keys}}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/rates"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[ChangingApi]:
    server = ChangingApi()
    yield server
    server.close()


def _chunk(ws: Workspace, api: ChangingApi, run_id: str, index: int) -> DurableAnswers:
    config = ApiEnrichmentConfig(url=api.url, key="currency", columns={"rate": "rate"}, batch=2)
    region = ws.regions[0]
    return DurableAnswers(
        ApiClient(config),
        backends.open_object_store(ws, region),
        f"runs/{run_id}/api/{index:05d}.json",
        epoch=1,
        shared=RunAnswers(backends.open_state_table(ws, region), run_id, epoch=1),
    )


def test_chunks_racing_for_one_key_all_use_the_first_answer(
    tmp_path: Path, api: ChangingApi
) -> None:
    ws = make_workspace(tmp_path / "ws")
    keys = ["EUR", "USD", "GBP", "JPY", "CHF"]
    chunks = 6
    seen: dict[int, dict[str, object]] = {}
    start = threading.Barrier(chunks)

    def run_chunk(index: int) -> None:
        answers = _chunk(ws, api, "run-a", index)
        start.wait()
        # each chunk asks the keys in its own order, as chunks of different rows would
        mine = keys[index % len(keys) :] + keys[: index % len(keys)]
        seen[index] = answers.answers(mine)

    threads = [threading.Thread(target=run_chunk, args=(i,)) for i in range(chunks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(seen) == chunks
    # one answer per key for the whole run, though the API answered differently each call
    for key in keys:
        answers = {json.dumps(seen[i][key]) for i in range(chunks)}
        assert len(answers) == 1, (key, answers)
    assert api.calls > 1  # the chunks did race (a test of nothing otherwise)
    table = backends.open_state_table(ws, ws.regions[0])
    records = {r.body["key"]: r.body["answer"] for r in table.scan(ANSWER, prefix="answer/run-a/")}
    assert records == seen[0]

    # A chunk of the same run that starts later asks the API nothing: the run knows the keys.
    before = api.calls
    assert _chunk(ws, api, "run-a", chunks).answers(keys) == seen[0]
    assert api.calls == before
    # Another run asks again and gets the API's answer of now.
    fresh = _chunk(ws, api, "run-b", 0).answers(["EUR"])
    assert api.calls == before + 1 and fresh["EUR"] != seen[0]["EUR"]


def test_a_chunk_run_again_gives_the_same_answers_even_without_the_run_records(
    tmp_path: Path, api: ChangingApi
) -> None:
    ws = make_workspace(tmp_path / "ws")
    first = _chunk(ws, api, "run-c", 0).answers(["EUR", "USD", "GBP"])
    table = backends.open_state_table(ws, ws.regions[0])
    for record in list(table.scan(ANSWER, prefix="answer/run-c/")):
        table.delete(record.pk, epoch=1)  # say the records were lost, the chunk's file was not
    calls = api.calls
    again = _chunk(ws, api, "run-c", 0).answers(["EUR", "USD", "GBP"])
    assert again == first and api.calls == calls
    # a key no chunk asked before is asked once, and recorded for the run
    with_new = _chunk(ws, api, "run-c", 0).answers(["EUR", "SEK"])
    assert with_new["EUR"] == first["EUR"] and api.asked["SEK"] == 1
    assert [r.body["key"] for r in table.scan(ANSWER, prefix="answer/run-c/")] == ["SEK"]
