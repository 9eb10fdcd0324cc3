"""The split found while an upload is stored (access.splithint): the same chunks a split task
finds, used by the region when the run's settings agree, ignored when they do not; and the
header, which only a split task checked, is still checked (by chunk 0's task)."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrbatch import backends
from mrbatch.access import splithint
from mrbatch.access.ledger import accept
from mrbatch.access.splithint import Splitter
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.engine import tasks
from mrbatch.errors import InputError
from mrbatch.faults import FaultPoints
from mrbatch.model.keys import output_key_for, run_id_for
from mrbatch.model.records import Accepted, ChunkSpec, FileRun, RunStatus, accepted_pk
from mrbatch.ports import ObjectInfo
from tests.conftest import Deployment, make_workspace
from tests.expected import expected_output
from tests.helpers import eventually, finished, mrbatch, put, run_of

SAMPLE = sample_bytes("orders.csv")
HEADER, BODY = SAMPLE.split(b"\n", 1)
HEADER += b"\n"
BODY = BODY.rstrip(b"\n") + b"\n"  # the sample's last line has no line break
LARGE = HEADER + BODY * 7  # 70,000 rows: above HINT_FROM_BYTES, so uploads find its chunks
# Bodies that hit the splitter's branches: a record over several lines, CRLF, blank lines,
# multibyte characters, bytes that are not UTF-8, NUL, a quote left open.
bodies = st.lists(
    st.sampled_from(
        [b"1,a,b\n", b'"x\ny",1\n', b'"', b"\r\n", b"\n", b",", "é".encode(), b"\xff", b"\x00"]
    ),
    max_size=40,
).map(b"".join)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    yield make_workspace(tmp_path_factory.mktemp("split-hint") / "ws")


def _fed(data: bytes, block: int, chunk_rows: int, input_format: str, inline: bool) -> object:
    """What a splitter finds when the store reads ``data`` ``block`` bytes at a time."""
    quote = '"' if input_format == "csv" else None
    splitter = Splitter(chunk_rows, input_format, quote, "k", inline=inline)
    stream = splitter.reading(data)
    while stream.read(block):
        pass
    hint = splitter.finish(len(data))
    return None if hint is None else (hint.header, [ChunkSpec(*c) for c in hint.chunks])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([b"", b"\xef\xbb\xbf"]),
    bodies,
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=9),
    st.sampled_from(["csv", "jsonl"]),
    st.booleans(),
)
def test_an_upload_finds_the_chunks_a_split_task_finds(
    ws: Workspace,
    bom: bytes,
    body: bytes,
    chunk_rows: int,
    block: int,
    input_format: str,
    inline: bool,
) -> None:
    """On a thread as the bytes go by, or inline once they are stored (a small upload)."""
    data = bom + (HEADER if input_format == "csv" else b"") + body
    region = ws.regions[0]
    store = backends.open_object_store(ws, region)
    info = store.put("input/hint.csv", data)
    try:
        found = tasks.split_task(
            str(ws.config_path), region, info.key, info.version, info.size, chunk_rows,
            info.key, "", input_format,
        )  # fmt: skip
    except InputError:
        assert _fed(data, block, chunk_rows, input_format, inline) is None  # a bad file: none
        return
    assert _fed(data, block, chunk_rows, input_format, inline) == (found.header, found.chunks)


@pytest.mark.parametrize("inline", [False, True])
def test_a_hint_is_never_taken_for_other_bytes_than_the_stored_ones(inline: bool) -> None:
    splitter = Splitter(2, "csv", '"', "k", inline=inline)
    stream = splitter.reading(HEADER + BODY[:2000])
    while stream.read(100):
        pass
    assert splitter.finish(len(HEADER) + 1999) is None  # the store says it took other bytes


def _split_note(run: FileRun) -> str:
    return next(h.get("note", "") for h in run.history if h["status"] == "SPLIT")


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[Workspace]:
    ws = make_workspace(tmp_path / "ws", chunk_rows=1_500)
    strict = (
        '\n[pipelines.strict]\nprefix = "input/strict/"\nschema = "pipeline/orders.schema.json"\n'
        "chunk_rows = 1500\n[pipelines.strict.file]\n"
        f"header = {json.dumps(HEADER.decode().strip().split(','))}\n"
    )
    ws.config_path.write_text(ws.config_path.read_text() + strict)
    ws = Workspace.load(ws.config_path)
    with Deployment(ws):
        yield ws


def test_the_region_takes_the_chunks_the_upload_found_and_ignores_a_hint_of_other_settings(
    deployed: Workspace,
) -> None:
    ws = deployed
    info = put(ws, "input/hinted.csv", LARGE)
    run = finished(ws, info, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert _split_note(run) == "47 chunk(s), found by the upload"
    record = backends.open_state_table(ws, run.region).get(accepted_pk(run.run_id))
    assert record is not None and Accepted.from_record(record).split is not None
    store = backends.open_object_store(ws, run.region)
    assert store.get(output_key_for(info.key)) == expected_output(LARGE)

    # An upload made under other settings (chunk_rows 1000): the region splits for itself.
    active = ws.regions[0]
    store = backends.open_object_store(ws, active)
    other = LARGE.replace(b"\n", b"\r\n", 1)  # other bytes: another version
    stored = store.put("input/stale-hint.csv", other, durable=True)
    splitter = Splitter(1_000, "csv", '"', stored.key)
    stream = splitter.reading(other)
    while stream.read(1 << 20):
        pass
    hint = splitter.finish(len(other))
    assert hint is not None and len(hint.chunks) == 70
    table = backends.open_state_table(ws, active)
    accept(store, table, stored, source="test", split=hint.to_body())
    assert table.get(accepted_pk(run_id_for(stored.key, stored.sha256))) is not None
    late = finished(ws, stored, timeout=120)
    assert late.status is RunStatus.COMPLETED, late.reason
    assert _split_note(late) == "47 chunk(s)"  # a split task's, with this run's 1,500 rows
    assert store.get(output_key_for(stored.key)) == expected_output(LARGE)


def test_a_hinted_file_with_another_header_than_file_header_fails_from_chunk_0(
    deployed: Workspace,
) -> None:
    """``file.header`` (the exact header a pipeline expects) was checked by the split task; a
    hinted run has none, so chunk 0's task checks it."""
    ws = deployed
    swapped = LARGE.replace(b"uuid,Country", b"Country,uuid", 1)
    bad = finished(ws, put(ws, "input/strict/swapped.csv", swapped), timeout=120)
    assert bad.status is RunStatus.FAILED
    assert _split_note(bad).endswith("found by the upload")
    assert bad.reason is not None and bad.reason.startswith(
        "input/strict/swapped.csv: the header is 'Country', 'uuid',"
    ), bad.reason
    assert "(file.header)" in bad.reason, bad.reason


def test_mrbatch_put_of_a_large_file_hands_the_region_its_chunks(deployed: Workspace) -> None:
    """Through the real command line (a file handed to the command server): above
    HINT_FROM_BYTES the upload finds the chunks and the run uses them."""
    ws = deployed
    data = LARGE
    path = ws.root / "large.csv"
    path.write_bytes(data)
    result = mrbatch(ws, "put", str(path), "--key", "input/large.csv", "--json")
    assert result.returncode == 0, result.stderr
    sha = json.loads(result.stdout)["sha256"]
    run = finished(ws, run_info(ws, "input/large.csv", sha), timeout=120)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert _split_note(run) == "47 chunk(s), found by the upload"
    store = backends.open_object_store(ws, run.region)
    assert store.get(output_key_for("input/large.csv")) == expected_output(data)
    assert run_of(ws, "input/large.csv", sha) is not None


def run_info(ws: Workspace, key: str, sha256: str) -> ObjectInfo:
    store = backends.open_object_store(ws, ws.regions[0])
    info = store.head(key)
    assert info is not None and info.sha256 == sha256
    return info


def test_only_uploads_of_hint_from_bytes_or_of_unknown_size_are_split_on_the_way(
    ws: Workspace,
) -> None:
    """Smaller ones keep their bytes and are split once stored; only inputs are split."""
    config, big = ws.config, LARGE
    assert len(big) >= splithint.HINT_FROM_BYTES > len(SAMPLE)
    assert Splitter.for_upload(config, "reference/small.csv", SAMPLE) is None
    small = Splitter.for_upload(config, "input/small.csv", SAMPLE)
    assert small is not None and small.inline
    small.abandon()
    with io.BytesIO(big) as stream:
        stream.seek(len(big) - len(SAMPLE))  # what is left to read counts
        rest = Splitter.for_upload(config, "input/rest.csv", stream)
        assert rest is not None and rest.inline
        rest.abandon()
        stream.seek(0)
        found = Splitter.for_upload(config, "input/big.csv", stream)
        assert found is not None and not found.inline and stream.tell() == 0
        found.abandon()
    read, write = os.pipe()
    with os.fdopen(read, "rb") as pipe:
        os.close(write)
        found = Splitter.for_upload(config, "input/piped.csv", pipe)  # size unknown
        assert found is not None and not found.inline
        found.abandon()


def test_a_small_upload_hands_the_region_its_chunks(deployed: Workspace) -> None:
    """No split task for a small file either: the upload found its chunks once stored."""
    ws = deployed
    info = put(ws, "input/small-hinted.csv", SAMPLE)
    run = finished(ws, info, timeout=60)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert _split_note(run) == "7 chunk(s), found by the upload"  # 10,000 rows by 1,500
    store = backends.open_object_store(ws, run.region)
    assert store.get(output_key_for(info.key)) == expected_output(SAMPLE)


@pytest.mark.parametrize(
    ("data", "waited", "chunks"),
    [
        (LARGE, 1.5, 47),  # bucket_watch.UPLOAD_RECORD_WAIT (2 s), less a poll's jitter
        (SAMPLE, 0.8, 7),  # bucket_watch.FRESH_INPUT_WAIT (1 s), less a poll's jitter
    ],
    ids=["large", "small"],
)
def test_an_input_written_to_the_bucket_directly_is_recorded_after_a_moment(
    deployed: Workspace, data: bytes, waited: float, chunks: int
) -> None:
    """An upload writes its bytes, then their record (with the chunks it found): the bucket
    watcher, which under load saw inputs in between and recorded them as written directly
    (``source="bucket"``, no chunks), gives a fresh input a moment first (a large one longer),
    and still records and runs bytes that no upload records (written to the bucket directly,
    or an acknowledgement cut short)."""
    ws = deployed
    store = backends.open_object_store(ws, ws.regions[0])
    stored = store.put("input/direct.csv", data, durable=True)
    run = finished(ws, stored, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.reason
    record = backends.open_state_table(ws, ws.regions[0]).get(accepted_pk(run.run_id))
    assert record is not None
    accepted = Accepted.from_record(record)
    assert (accepted.source, accepted.split) == ("bucket", None)
    assert run.accepted_at is not None and run.accepted_at - stored.modified >= waited
    assert _split_note(run) == f"{chunks} chunk(s)"


def test_an_input_replicated_in_before_its_record_keeps_the_record_of_its_upload(
    deployed: Workspace,
) -> None:
    """Objects replicate before records: the standby's bucket watcher sees the input before its
    Accepted record arrives. Recorded there first, the standby's own record (its clock, its
    name) won the merge, in both regions, and moved the version in the acceptance order; the
    watcher now waits for the record that follows."""
    ws = deployed
    active, standby = ws.regions
    faults = FaultPoints(ws.faults_path)
    held = faults.arm("replication:records", region=active, note="records held back")
    try:
        info = put(ws, "input/replicated.csv", SAMPLE, region=active)
        replica = backends.open_object_store(ws, standby)
        eventually(lambda: replica.head(info.key) is not None, 30, "the input in the standby")
        time.sleep(0.3)  # several passes of the standby's watcher
    finally:
        faults.disarm(held.id)
    table = backends.open_state_table(ws, standby)
    record = eventually(lambda: table.get(accepted_pk(run_id_for(info.key, info.sha256))), 30)
    accepted = Accepted.from_record(record)
    assert (accepted.region, accepted.source) == (active, "put"), accepted
    assert finished(ws, info).status is RunStatus.COMPLETED
