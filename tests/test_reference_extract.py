"""Large reference data: the cache is written part by part (bounded memory), checked for
duplicate keys pass by pass, and a group of chunks shares one scan of it (an extract) whose
answers are always the whole reference's."""

from __future__ import annotations

import shutil
from concurrent.futures import wait
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrbatch import backends
from mrbatch.access.accesspoint import AccessPoint
from mrbatch.config.initialize import sample_bytes
from mrbatch.engine import extracts as engine_extracts
from mrbatch.engine.region import RegionProcess
from mrbatch.errors import ReferenceDataError
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import FileRun, RunStatus, run_pk
from mrbatch.pipeline import extract, reference
from mrbatch.pipeline.extract import ExtractedReference, extract_group, group_members
from mrbatch.pipeline.reference import (
    REFERENCE_HASH_COLUMN,
    REFERENCE_KEY_COLUMN,
    Enrichment,
    ReferenceTable,
    key_hashes,
    prepare_reference,
)
from tests.conftest import make_workspace
from tests.expected import expected_output

ENRICH = Enrichment("k", "id", {"v": "V", "w": "W"})


def _reference_csv(path: Path, keys: list[str]) -> Path:
    rows = "".join(f'{k},"v {k}",w{i}\n' for i, k in enumerate(keys))
    path.write_text("id,v,w\n" + rows, encoding="utf-8")
    return path


def _sorted(frame: pl.DataFrame) -> list[tuple[str | None, ...]]:
    return sorted(frame.select(REFERENCE_KEY_COLUMN, "V", "W").rows())


def test_a_cache_in_many_parts_answers_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"{i:05d}" for i in range(0, 2_000, 3)]
    source = _reference_csv(tmp_path / "ref.csv", keys)
    whole = ReferenceTable(tmp_path / "whole.parquet")
    prepare_reference(source, whole.path, ENRICH, source="ref.csv")
    monkeypatch.setattr(reference, "_PART_ROWS", 50)
    monkeypatch.setattr(reference, "_DUPLICATE_PASS_ROWS", 100)
    parted = ReferenceTable(tmp_path / "parted.parquet")
    assert prepare_reference(source, parted.path, ENRICH, source="ref.csv").rows == len(keys)
    assert len(whole.parts) == 1 and len(parted.parts) == 14
    for part in parted.parts:  # sorted by hash, which extracts rely on
        assert pl.read_parquet(part).get_column(REFERENCE_HASH_COLUMN).is_sorted()
    asked = pl.Series(["00000", "00003", "01998", "00001", None, "nope", "00003"])
    assert _sorted(parted.lookup(asked)) == _sorted(whole.lookup(asked))
    assert parted.rows == whole.rows == len(keys)


def test_duplicates_in_different_parts_and_passes_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reference, "_PART_ROWS", 40)
    monkeypatch.setattr(reference, "_DUPLICATE_PASS_ROWS", 30)
    keys = [f"{i:04d}" for i in range(300)] + ["0007", "0299", "0150"]
    source = _reference_csv(tmp_path / "ref.csv", keys)
    cache = tmp_path / "cache" / "ref.parquet"
    with pytest.raises(ReferenceDataError, match="duplicate keys in column 'id': '0007', '0150'"):
        prepare_reference(source, cache, ENRICH, source="ref.csv")
    assert list(cache.parent.iterdir()) == []  # no cache, no leftover parts


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(
        st.lists(st.integers(0, 400).map(lambda i: f"k{i}"), max_size=40), min_size=1, max_size=6
    ),
    extra=st.lists(st.integers(0, 400).map(lambda i: f"k{i}"), max_size=5),
)
def test_an_extract_answers_what_the_whole_reference_answers(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[list[str]], extra: list[str]
) -> None:
    base = tmp_path_factory.mktemp("extract")
    table = _table(base)
    requests = {index: key_hashes(pl.Series(keys, dtype=pl.String)) for index, keys in
                enumerate(chunks)}  # fmt: skip
    target = base / "group"
    extract_group(table, requests, target)
    for index, keys in enumerate(chunks):
        # A chunk may look up keys it did not ask for (a schema that rewrote one): those come
        # from the whole reference.
        asked = pl.Series([*keys, *extra], dtype=pl.String)
        mine = ExtractedReference(table, target / f"{index:05d}")
        assert _sorted(mine.lookup(asked)) == _sorted(table.lookup(asked))
    shutil.rmtree(base)


def _table(base: Path) -> ReferenceTable:
    keys = [f"k{i}" for i in range(0, 400, 2)]  # odd keys have no reference row
    cache = base / "ref.parquet"
    prepare_reference(_reference_csv(base / "ref.csv", keys), cache, ENRICH, source="ref.csv")
    return ReferenceTable(cache)


def test_a_missing_extract_falls_back_to_the_whole_reference(tmp_path: Path) -> None:
    table = _table(tmp_path)
    gone = ExtractedReference(table, tmp_path / "nowhere" / "00001")
    asked = pl.Series(["k2", "k3", "k398"])
    assert _sorted(gone.lookup(asked)) == _sorted(table.lookup(asked))


@given(lines=st.lists(st.integers(1, 1_000_000), min_size=1, max_size=80))
def test_groups_deal_every_chunk_to_exactly_one_group(lines: list[int]) -> None:
    groups = {group_members(lines, i) for i in range(len(lines))}
    dealt = sorted(i for group in groups for i in group)
    assert dealt == list(range(len(lines)))
    for i in range(len(lines)):
        assert i in group_members(lines, i)
    if len(groups) > 1:  # the first chunks (one per worker) start different groups' scans
        assert group_members(lines, 0) != group_members(lines, 1)


def test_a_run_shares_reference_scans_and_leaves_no_extract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sample (10,000 rows, 10,000 reference rows) as 20 chunks in groups of 4; the inline
    # executor runs the tasks in this process, so the thresholds can be lowered here.
    monkeypatch.setattr(engine_extracts, "EXTRACT_MIN_REFERENCE_ROWS", 0)
    monkeypatch.setattr(extract, "_GROUP_KEYS", 2_000)
    made: list[set[int]] = []
    real = engine_extracts.extract_group

    def counting(table: ReferenceTable, requests: dict[int, pl.Series], target: Path) -> None:
        made.append(set(requests))
        real(table, requests, target)

    monkeypatch.setattr(engine_extracts, "extract_group", counting)
    ws = make_workspace(tmp_path / "ws", chunk_rows=500, backends={"executor": "inline"})
    region = ws.regions[0]
    located = AccessPoint(ws).put("input/big.csv", sample_bytes("orders.csv"))
    assert located.accepted is not None
    run_id = run_id_for(located.info.key, located.info.sha256)
    process = RegionProcess(ws, region)
    try:
        routing = process.control.routing()
        process.orch.activate(routing)
        source = process.store.head(located.accepted.object_key)
        assert source is not None
        assert process.orch.claim(located.accepted, source, routing) is not None
        for _ in range(400):
            process.orch.step(routing)
            if run_id not in process.orch.runs:
                break
            wait([f for f in process.orch.futures() if not f.done()], timeout=5)
        record = backends.open_state_table(ws, region).get(run_pk(run_id))
        assert record is not None
        run = FileRun.from_record(record)
        assert run.status is RunStatus.COMPLETED, run.reason
        store = backends.open_object_store(ws, region)
        assert store.get("output/big.csv") == expected_output()
    finally:
        process.orch.shutdown()
        process.executor.shutdown()
    assert sorted(sorted(group) for group in made) == [[g, g + 5, g + 10, g + 15] for g in range(5)]
    leftovers = list((ws.region_dir(region) / "cache" / "extracts").iterdir())
    assert leftovers == [], leftovers


def test_an_extract_of_an_unsorted_cache_answers_the_same(tmp_path: Path) -> None:
    table = _table(tmp_path)  # a cache as earlier versions wrote it: one file, in CSV order
    single = tmp_path / "single.parquet"
    pl.read_parquet(table.parts).sample(fraction=1.0, shuffle=True, seed=2).write_parquet(single)
    old = ReferenceTable(single)
    assert not pl.read_parquet(single).get_column(REFERENCE_HASH_COLUMN).is_sorted()
    requests = {0: key_hashes(pl.Series(["k2", "k4", "k5"])), 3: key_hashes(pl.Series(["k4"]))}
    extract_group(old, requests, tmp_path / "group")
    for index, keys in ((0, ["k2", "k4", "k5", "k8"]), (3, ["k4"])):
        asked = pl.Series(keys)
        mine = ExtractedReference(old, tmp_path / "group" / f"{index:05d}")
        assert _sorted(mine.lookup(asked)) == _sorted(table.lookup(asked))
