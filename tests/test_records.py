"""A record's stored body is exactly what ``dataclasses.asdict`` made of it (the cheaper copy
the records use changes nothing a reader or a replica sees), and it is a copy: changing the run
afterwards does not change a body already built."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mrbatch.model.records import ChunkRun, ChunkSpec, ChunkStatus, FileRun, RunStatus

text = st.text(max_size=8)
scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
nested = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
specs = st.builds(
    ChunkSpec, index=st.integers(0, 99), start=st.integers(0), end=st.integers(0), sha256=text,
    first_line=st.integers(1), lines=st.integers(0), groups=st.lists(st.integers(0), max_size=3),
)  # fmt: skip


def _asdict_body(record: Any) -> dict[str, Any]:
    body = dataclasses.asdict(record)
    body["status"] = str(record.status)
    body["v"] = 1
    return body


@given(
    statuses=st.lists(st.sampled_from(list(RunStatus)), min_size=1, max_size=6),
    chunks=st.lists(specs, max_size=3),
    failure_mail=st.none() | st.dictionaries(text, nested, max_size=3),
    header=st.lists(text, max_size=4),
)
def test_a_run_body_is_what_asdict_made_and_a_copy(
    statuses: list[RunStatus],
    chunks: list[ChunkSpec],
    failure_mail: dict[str, Any] | None,
    header: list[str],
) -> None:
    run = FileRun(
        run_id="r" * 32, input_key="input/a.csv", input_sha256="s" * 64, input_version="v1",
        input_size=10, status=RunStatus.CLAIMED, region="east", epoch=1, claimed_at=1.0,
        updated_at=1.0, chunks=chunks, failure_mail=failure_mail, output_header=header,
    )  # fmt: skip
    for status in statuses:
        run.advance(status, region="east", epoch=2, note="n")
    body = run.to_body()
    assert json.dumps(body, sort_keys=True) == json.dumps(_asdict_body(run), sort_keys=True)
    before = json.dumps(body, sort_keys=True)
    run.history[0]["status"] = "changed"
    run.output_header.append("more")
    if run.chunks:
        run.chunks[0].groups.append(7)
    assert json.dumps(body, sort_keys=True) == before
    assert FileRun.from_body(json.loads(before)).to_body() == json.loads(before)


@given(counts=st.lists(text, max_size=3), status=st.sampled_from(list(ChunkStatus)))
def test_a_chunk_body_is_what_asdict_made(counts: list[str], status: ChunkStatus) -> None:
    chunk = ChunkRun(run_id="r" * 32, index=3, status=status, counts=counts)
    assert chunk.to_body() == _asdict_body(chunk)
