"""Large reference data: the cache is written part by part (bounded memory), checked for
duplicate keys pass by pass, and holds each row's output columns packed into one text column
that must give back exactly the values it was given."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrbatch import backends
from mrbatch.engine import tasks
from mrbatch.errors import ReferenceDataError
from mrbatch.pipeline import reference
from mrbatch.pipeline.reference import (
    REFERENCE_KEY_COLUMN,
    Enrichment,
    ReferenceTable,
    prepare_reference,
)
from tests.conftest import make_workspace
from tests.test_pipeline import SAMPLES

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
    asked = pl.Series(["00000", "00003", "01998", "00001", None, "nope", "00003"])
    assert _sorted(parted.lookup(asked)) == _sorted(whole.lookup(asked))


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


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.tuples(
            st.one_of(
                st.none(),
                st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\r")),
            ),
            st.one_of(
                st.none(),
                st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\r")),
            ),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_packed_columns_give_back_every_value_empty_and_missing_apart(
    tmp_path_factory: pytest.TempPathFactory, values: list[tuple[str | None, str | None]]
) -> None:
    base = tmp_path_factory.mktemp("packed")
    keys = [f"k{i}" for i in range(len(values))]
    frame = pl.DataFrame(
        {"id": keys, "v": [v for v, _ in values], "w": [w for _, w in values]},
        schema={"id": pl.String, "v": pl.String, "w": pl.String},
    )
    frame.write_csv(base / "ref.csv")  # quotes what needs it; None is an empty field
    expected = pl.read_csv(base / "ref.csv", infer_schema=False)  # what any reader sees
    prepare_reference(base / "ref.csv", base / "c.parquet", ENRICH, source="ref.csv")
    got = ReferenceTable(base / "c.parquet").lookup(pl.Series(keys))
    assert got.columns == [REFERENCE_KEY_COLUMN, "V", "W"]
    assert sorted(got.rows()) == sorted(expected.rows())
    shutil.rmtree(base)


@pytest.mark.parametrize(("setting", "limit"), [("0", 0), ("2MiB", 2 << 20)])
def test_a_workers_hold_limit_is_the_configured_reference_memory(
    tmp_path: Path, setting: str, limit: int
) -> None:
    """The chunk tasks' reference table holds the cache only up to pipeline.reference_memory."""
    ws = make_workspace(tmp_path / "ws", pipeline={"reference_memory": setting})
    region = ws.regions[0]
    stored = backends.open_object_store(ws, region).put(
        "reference/financial.csv", (SAMPLES / "financial.csv").read_bytes()
    )
    ctx, loaded = tasks._pipeline(str(ws.config_path), region, "", "input/orders.csv")
    table = tasks._ensure_reference(ctx, loaded, stored.key, stored.sha256)
    assert table.hold_max_bytes == limit
    assert table.holdable is (limit > 0)  # the sample's cache: about 0.7 MiB
