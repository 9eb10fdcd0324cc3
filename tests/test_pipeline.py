"""Pipeline: split, process a chunk (parse, validate, enrich), reference data, merge helpers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mrbatch.errors import ConfigError, InputError, ReferenceDataError
from mrbatch.pipeline import enrich as enrich_module
from mrbatch.pipeline import reference as reference_module
from mrbatch.pipeline.chunk import ChunkOutput, process_chunk
from mrbatch.pipeline.csvsplit import SplitChunk, split_csv
from mrbatch.pipeline.formats import read_rejected, renumber_rejected
from mrbatch.pipeline.parse import count_records
from mrbatch.pipeline.reference import (
    REFERENCE_KEY_COLUMN,
    Enrichment,
    ReferenceTable,
    prepare_reference,
)
from mrbatch.pipeline.schema import RecordSchema

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "mrbatch" / "config" / "samples"
SAMPLE_ENRICHMENT = Enrichment(
    key="uuid",
    reference_key="uuid",
    columns={
        "unitsSold": "Units Sold", "unitPrice": "Unit Price", "unitCost": "Unit Cost",
        "totalRevenue": "Total Revenue", "totalCost": "Total Cost", "totalProfit": "Total Profit",
    },
)  # fmt: skip
SAMPLE_HEADER = (
    "uuid,Country,Item Type,Sales Channel,Order Priority,Order Date,Region,Ship Date,"
    "Units Sold,Unit Price,Unit Cost,Total Revenue,Total Cost,Total Profit"
)
# A small schema for hand-written cases: a required 3-digit id, a required name of at most
# 5 characters, an optional enum.
SMALL = RecordSchema.from_dict(
    {
        "required": ["id", "name"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]{3}$"},
            "name": {"type": "string", "maxLength": 5},
            "kind": {"type": "string", "enum": ["a", "b"]},
        },
    },
    source="small.json",
)


def run(data: str | bytes, schema: RecordSchema = SMALL, **kw: Any) -> ChunkOutput:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    kw.setdefault("first_line", 2)
    kw.setdefault("enrichment", None)
    kw.setdefault("reference", None)
    out = process_chunk(raw, schema=schema, source="input/t.csv", **kw)
    assert out.rows_in == out.rows_out + out.rows_rejected
    assert count_records(out.output) == out.rows_out
    assert count_records(out.rejected) == out.rows_rejected
    return out


def parse(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def rejected(out: ChunkOutput) -> list[dict[str, Any]]:
    return read_rejected(out.rejected, out.rejected_header)


def split(data: bytes, chunk_rows: int, block_size: int = 8 << 20, **kw: Any) -> list[SplitChunk]:
    return list(split_csv(io.BytesIO(data), chunk_rows=chunk_rows, source="in.csv",
                          block_size=block_size, **kw))  # fmt: skip


@pytest.fixture(scope="module")
def sample_reference(tmp_path_factory: pytest.TempPathFactory) -> ReferenceTable:
    cache = tmp_path_factory.mktemp("ref") / "financial.parquet"
    info = prepare_reference(
        SAMPLES / "financial.csv", cache, SAMPLE_ENRICHMENT, source="reference/financial.csv"
    )
    assert info.rows == 10_000
    return ReferenceTable(cache)


# ====================================================================== the sample workload
def test_sample_orders_are_all_enriched_with_text_values(sample_reference: ReferenceTable) -> None:
    data = (SAMPLES / "orders.csv").read_bytes()
    schema = RecordSchema.from_file(SAMPLES / "orders.schema.json")
    outputs, rejects, header = [], [], None
    for chunk in split(data, chunk_rows=3_000):
        out = process_chunk(
            chunk.data, schema=schema, enrichment=SAMPLE_ENRICHMENT, reference=sample_reference,
            first_line=chunk.first_line, source="input/orders.csv",
        )  # fmt: skip
        header = out.output_header
        outputs.append(out.output)
        rejects.append(out.rejected)
    assert ",".join(header or []) == SAMPLE_HEADER
    assert b"".join(rejects) == b""
    rows = parse(b"".join(outputs))
    assert len(rows) == 10_000

    orders = parse(data)[1:]
    fin_rows = parse((SAMPLES / "financial.csv").read_bytes())
    financial = {r[0]: r[1:] for r in fin_rows[1:]}
    assert fin_rows[0] == ["uuid", *SAMPLE_ENRICHMENT.columns]
    for order, row in zip(orders, rows, strict=True):
        assert row == order + financial[order[0]]


def test_keys_sharing_a_hash_are_joined_on_the_keys_themselves(
    sample_reference: ReferenceTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join of a reference too large to hold goes by the keys' 64-bit hashes; should two
    keys share one, the rows are still the ones a join on the keys gives: here every key
    hashes alike, and one order's key is in no reference row (it must be rejected, not given
    another key's data)."""
    scanned = ReferenceTable(sample_reference.path, hold_max_bytes=0)  # scanned, not held
    text = (SAMPLES / "orders.csv").read_text(encoding="utf-8").splitlines()
    stray = text[2].split(",")
    stray[0] = "999999999"
    data = "\n".join([*text[:50], ",".join(stray)]) + "\n"
    schema = RecordSchema.from_file(SAMPLES / "orders.schema.json")

    def once() -> tuple[bytes, bytes]:
        out = run(data, schema=schema, enrichment=SAMPLE_ENRICHMENT, reference=scanned)
        return out.output, out.rejected

    by_hash = once()
    monkeypatch.setattr(enrich_module, "hash_keys", lambda keys: keys.hash(7) * 0)  # all alike
    assert once() == by_hash
    assert len(parse(by_hash[0])) == 49 and b"no reference data for '999999999'" in by_hash[1]
    # Two orders, one known: each pairs with the known reference row once, so only comparing
    # the keys shows that the stray one has none.
    data = f"{text[0]}\n{text[1]}\n{','.join(stray)}\n"
    monkeypatch.setattr(enrich_module, "hash_keys", reference_module.hash_keys)
    pair = once()
    monkeypatch.setattr(enrich_module, "hash_keys", lambda keys: keys.hash(7) * 0)
    assert once() == pair
    assert len(parse(pair[0])) == 1 and b"no reference data for '999999999'" in pair[1]


def _first_digit(keys: pl.Expr) -> pl.Expr:
    """A poor key hash: keys with the same first digit share it."""
    return keys.cast(pl.String).str.slice(0, 1).hash(7)


def test_a_held_reference_matches_keys_not_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small reference is held in memory and searched by key hash: a key sharing its hash
    with a reference key it is not must be rejected, not given that key's data."""
    monkeypatch.setattr(reference_module, "hash_keys", _first_digit)
    (tmp_path / "ref.csv").write_text("code,price\n100,1\n200,2\n300,3\n", encoding="utf-8")
    enrichment = Enrichment("id", "code", {"price": "Price"})
    prepare_reference(tmp_path / "ref.csv", tmp_path / "r.parquet", enrichment, source="ref")
    table = ReferenceTable(tmp_path / "r.parquet")
    fields = table.fields(pl.Series(["300", "301", "400", None]))
    assert fields is not None  # held: the keys' hashes are distinct
    assert fields.rows() == [("300", "3"), (None, None), (None, None), (None, None)]
    out = run("id,name,kind\n300,a,a\n301,b,a\n400,c,b\n", enrichment=enrichment, reference=table)
    assert out.output == b"300,a,a,3\n"
    assert [r["reason"] for r in rejected(out)] == [
        "id: no reference data for '301'", "id: no reference data for '400'"
    ]  # fmt: skip


def test_a_reference_is_held_only_up_to_its_memory_limit(tmp_path: Path) -> None:
    """pipeline.reference_memory: a cache estimated above the limit is scanned (0: always),
    with the same output."""
    (tmp_path / "ref.csv").write_text("code,price\n100,1\n200,2\n", encoding="utf-8")
    enrichment = Enrichment("id", "code", {"price": "Price"})
    prepare_reference(tmp_path / "ref.csv", tmp_path / "r.parquet", enrichment, source="ref")
    data = "id,name,kind\n200,a,a\n300,b,b\n100,c,a\n"
    held, scanned = (ReferenceTable(tmp_path / "r.parquet", hold_max_bytes=n) for n in (1 << 20, 0))
    assert (
        held.fields(pl.Series(["100"])) is not None and scanned.fields(pl.Series(["100"])) is None
    )
    out = run(data, enrichment=enrichment, reference=held)
    assert out == run(data, enrichment=enrichment, reference=scanned)
    assert out.output == b"200,a,a,2\n100,c,a,1\n"


def test_a_reference_whose_keys_share_a_hash_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reference keys with one hash: a search among hashes could find the wrong one, so
    the cache is scanned and joined on the keys instead, with the same output."""
    (tmp_path / "ref.csv").write_text("code,price\n100,1\n101,2\n300,3\n", encoding="utf-8")
    enrichment = Enrichment("id", "code", {"price": "Price"})
    data = "id,name,kind\n101,a,a\n100,b,b\n102,c,a\n300,d,a\n"
    prepare_reference(tmp_path / "ref.csv", tmp_path / "good.parquet", enrichment, source="ref")
    well_hashed = run(
        data, enrichment=enrichment, reference=ReferenceTable(tmp_path / "good.parquet")
    )
    monkeypatch.setattr(reference_module, "hash_keys", _first_digit)
    prepare_reference(tmp_path / "ref.csv", tmp_path / "r.parquet", enrichment, source="ref")
    table = ReferenceTable(tmp_path / "r.parquet")
    assert table.holdable and table.fields(pl.Series(["100"])) is None
    assert run(data, enrichment=enrichment, reference=table) == well_hashed
    assert well_hashed.output == b"101,a,a,2\n100,b,b,1\n300,d,a,3\n"


def test_numbers_stay_text_leading_zeros_and_trailing_zeros(tmp_path: Path) -> None:
    """The sample files happen to hold neither, so plant them: type inference would break both."""
    orders = (SAMPLES / "orders.csv").read_text(encoding="utf-8").splitlines()
    header, first = orders[0], orders[1].split(",")
    ref_csv = tmp_path / "fin.csv"
    ref_csv.write_text(
        "uuid,unitsSold,unitPrice,unitCost,totalRevenue,totalCost,totalProfit\n"
        "000000123,0934,152.50,97.40,1495922.60,1e3,-0.0\n",
        encoding="utf-8",
    )
    prepare_reference(ref_csv, tmp_path / "fin.parquet", SAMPLE_ENRICHMENT, source="fin.csv")
    data = f"{header}\n000000123,{','.join(first[1:])}\n"
    out = run(
        data, schema=RecordSchema.from_file(SAMPLES / "orders.schema.json"),
        enrichment=SAMPLE_ENRICHMENT, reference=ReferenceTable(tmp_path / "fin.parquet"),
    )  # fmt: skip
    assert parse(out.output) == [
        ["000000123", *first[1:], "0934", "152.50", "97.40", "1495922.60", "1e3", "-0.0"]
    ]


def test_sample_output_is_byte_identical_across_runs_and_chunkings(
    sample_reference: ReferenceTable,
) -> None:
    data = (SAMPLES / "orders.csv").read_bytes()
    schema = RecordSchema.from_file(SAMPLES / "orders.schema.json")

    def whole(chunk_rows: int) -> bytes:
        return b"".join(
            process_chunk(
                c.data, schema=schema, enrichment=SAMPLE_ENRICHMENT, reference=sample_reference,
                first_line=c.first_line, source="o.csv",
            ).output
            for c in split(data, chunk_rows)
        )  # fmt: skip

    assert whole(10_000) == whole(777) == whole(10_000)


def test_rows_without_reference_data_are_rejected(tmp_path: Path) -> None:
    ref_csv = tmp_path / "ref.csv"
    ref_csv.write_text("code,price\n001,1.50\n002,2.00\n", encoding="utf-8")
    enrichment = Enrichment("id", "code", {"price": "Price"})
    prepare_reference(ref_csv, tmp_path / "ref.parquet", enrichment, source="ref.csv")
    out = run(
        "id,name\n002,bob\n003,eve\n001,al\n",
        enrichment=enrichment,
        reference=ReferenceTable(tmp_path / "ref.parquet"),
    )
    assert out.output_header == ["id", "name", "kind", "Price"]
    assert parse(out.output) == [["002", "bob", "", "2.00"], ["001", "al", "", "1.50"]]
    assert [(r["row"], r["line"], r["reason"]) for r in rejected(out)] == [
        (2, 3, "id: no reference data for '003'")
    ]
    # Nothing valid: no lookup result, same header, every row rejected.
    none = run(
        "id,name\n9,bob\n003,eve\n",
        enrichment=enrichment,
        reference=ReferenceTable(tmp_path / "ref.parquet"),
    )
    assert (none.output, none.output_header, none.rows_rejected) == (b"", out.output_header, 2)


# ====================================================================== splitting
QUOTED = (
    b'id,name,note\r\n'
    b'001,ann,"multi\r\nline, with comma"\r\n'
    b'\r\n'
    b'002,"bo""b",plain\r\n'
    b'003,eve,"a\n\nb"\n'
    b'004,"x,y",\n'
    b'005,zed,"""quoted"""'
)  # fmt: skip


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 5, 7, 100])
@pytest.mark.parametrize("block_size", [1, 3, 16, 1 << 20])
def test_split_then_concatenate_is_identity(chunk_rows: int, block_size: int) -> None:
    data = QUOTED + b"\n" + b"".join(b"%03d,n%d,x\n" % (i, i) for i in range(40))
    chunks = split(data, chunk_rows, block_size)
    header = chunks[0].data[: chunks[0].header_size]
    assert header == b"id,name,note\r\n"
    assert header + b"".join(c.body for c in chunks) == data
    line = 2
    for i, c in enumerate(chunks):
        assert (c.index, c.first_line) == (i, line)
        assert c.data.startswith(header)
        assert c.lines == c.body.count(b"\n") + (not c.body.endswith(b"\n"))
        assert c.body.count(b'"') % 2 == 0  # never inside a quoted field
        line += c.lines
    # Boundaries depend on the bytes and chunk_rows only, never on the block size.
    assert [c.data for c in chunks] == [c.data for c in split(data, chunk_rows)]


def test_split_counts_physical_lines_exactly() -> None:
    data = b"h1,h2\n" + b"".join(b"%d,x\n" % i for i in range(10))
    chunks = split(data, 3, block_size=7)
    assert [(c.first_line, c.lines) for c in chunks] == [(2, 3), (5, 3), (8, 3), (11, 1)]
    assert chunks[1].body == b"3,x\n4,x\n5,x\n"


def test_split_extends_a_chunk_to_the_end_of_a_quoted_record() -> None:
    data = b'a,b\n1,"x\ny\nz"\n2,w\n'
    chunks = split(data, 1, block_size=2)
    assert [(c.first_line, c.lines, c.body) for c in chunks] == [
        (2, 3, b'1,"x\ny\nz"\n'),
        (5, 1, b"2,w\n"),
    ]


def test_split_header_only_yields_one_empty_chunk() -> None:
    for data in (b"id,name\n", b"id,name", b"\xef\xbb\xbfid,name\r\n"):
        chunks = split(data, 10)
        assert len(chunks) == 1
        assert chunks[0].body == b""
        assert chunks[0].lines == 0
        assert chunks[0].first_line == 2
        out = run(chunks[0].data)
        assert (out.rows_in, out.output, out.output_header) == (0, b"", ["id", "name", "kind"])


def test_split_removes_the_bom_from_the_header() -> None:
    chunks = split(b"\xef\xbb\xbfid,name\n001,a\n", 1)
    assert chunks[0].data == b"id,name\n001,a\n"


@pytest.mark.parametrize("data", [b"", b"   \n\r\n\t", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n"])
def test_split_empty_file(data: bytes) -> None:
    with pytest.raises(InputError, match=r"^in.csv is empty: expected a header row"):
        split(data, 10)


def test_split_blank_first_line_before_a_header() -> None:
    with pytest.raises(InputError, match="line 1 is blank"):
        split(b"\nid,name\n1,a\n", 10, block_size=2)


def test_split_binary_file_names_offset_and_line() -> None:
    data = b"id,name\n001,a\n002,\x00b\n"
    with pytest.raises(InputError) as err:
        split(data, 1, block_size=4)
    assert str(err.value) == (
        "in.csv looks binary (NUL byte at offset 18, line 3): expected UTF-8 CSV text"
    )
    with pytest.raises(InputError, match=r"NUL byte at offset 0, line 1"):
        split(b"\x00\x01PK", 1)


def test_split_invalid_utf8_names_byte_offset_and_line() -> None:
    data = b"\xef\xbb\xbfid,name\n001,caf\xc3\xa9\n002,caf\xe9\n"
    with pytest.raises(InputError) as err:
        split(data, 1)
    assert str(err.value) == (
        "in.csv is not valid UTF-8: byte 0xe9 at offset 28 (line 3); save the file as UTF-8"
    )


def test_split_unterminated_quote_names_the_opening_line() -> None:
    data = b'id,name\n001,a\n002,"b\n003,c\n004,d\n'
    with pytest.raises(InputError, match=r"^in.csv: line 3: a quoted field opened here"):
        split(data, 1, block_size=3)
    with pytest.raises(InputError, match="line 3"):
        split(data, 100)


def test_split_bounds_a_record_that_never_ends() -> None:
    long_line = b"id\n1\n" + b"x" * 100 + b"\n"
    assert len(split(long_line, 1, block_size=8, max_record_bytes=100)) == 2
    with pytest.raises(InputError, match=r"^in.csv: line 3 is longer than 50 bytes"):
        split(long_line, 1, block_size=8, max_record_bytes=50)
    open_quote = b'id,name\n1,a\n2,"b\n' + b"more text\n" * 20
    with pytest.raises(InputError, match=r"line 3: a quoted field opened here is still open 50 b"):
        split(open_quote, 1, block_size=8, max_record_bytes=50)


def test_split_detects_a_binary_file_before_reading_it_all() -> None:
    class Blob(io.RawIOBase):
        """An endless stream of bytes without a line break, with a NUL early on."""

        reads = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            self.reads += 1
            b[:] = b"PK\x03\x04\x00" + b"z" * (len(b) - 5)
            return len(b)

    blob = Blob()
    with pytest.raises(InputError, match=r"looks binary \(NUL byte at offset 4, line 1\)"):
        list(split_csv(blob, chunk_rows=10, source="in.csv", block_size=1024))  # type: ignore[arg-type]
    assert blob.reads == 1


def test_split_rejects_non_positive_chunk_rows() -> None:
    with pytest.raises(ValueError):
        split(b"a\n1\n", 0)


# ====================================================================== parsing
def test_quoted_commas_newlines_and_escaped_quotes() -> None:
    data = 'id,name,kind\n001,"a,b",a\n002,"x\r\ny",b\n003,"q""",\n004,"""",a\n'
    out = run(data)
    assert out.rows_in == 4
    assert parse(out.output) == [
        ["001", "a,b", "a"],
        ["002", "x\r\ny", "b"],
        ["003", 'q"', ""],
        ["004", '"', "a"],
    ]
    assert out.output == (
        b'001,"a,b",a\n002,"x\r\ny",b\n003,"q""",\n004,"""",a\n'
    )  # minimal quoting: only the fields that need it


def test_fast_path_and_csv_path_give_identical_results() -> None:
    rows = [["001", "ann", "a"], ["02", "bob", ""], ["003", "", "c"], ["004", "toolong", "b"],
            ["005", "x"], ["006", "y", "a", "extra"], ["007", "é😀", "b"]]  # fmt: skip
    plain = "id,name,kind\n" + "".join(",".join(r) + "\n" for r in rows)
    quoted = "id,name,kind\n" + "".join(",".join(f'"{v}"' for v in r) + "\n" for r in rows)
    a, b = run(plain), run(quoted)
    assert (a.output, a.rejected, a.rows_out) == (b.output, b.rejected, b.rows_out)
    assert a.rows_out == 2
    # The same records again with a quoted record mixed in: the other records are unchanged.
    mixed = plain + '"008","q,r","a"\n'
    c = run(mixed)
    assert c.output == a.output + b'008,"q,r",a\n'
    assert c.rejected == a.rejected


def test_crlf_input_gives_lf_output() -> None:
    out = run("id,name\r\n001,ann\r\n002,bob\r\n")
    assert out.output == b"001,ann,\n002,bob,\n"
    assert run("id,name\r\n001,ann\r\n002,bob").output == out.output


def test_lone_cr_inside_a_field_is_data() -> None:
    out = run("id,name\n001,a\rb\n")
    assert parse(out.output) == [["001", "a\rb", ""]]
    assert out.output == b'001,"a\rb",\n'


def test_blank_lines_are_skipped_but_keep_line_numbers() -> None:
    out = run("id,name\n\n001,ann\n\r\n\n1,x\n\n", first_line=2)
    assert out.rows_in == 2
    assert [(r["row"], r["line"]) for r in rejected(out)] == [(2, 6)]


def test_ragged_rows_are_rejected_with_counts_and_extra_fields() -> None:
    out = run('id,name,kind\n001,ann,a\n002,bob\n003,eve,b,x,"y,z"\n004\n', first_line=10)
    assert out.rows_in == 4
    assert out.rows_out == 1
    got = rejected(out)
    assert [(r["row"], r["line"], r["reason"]) for r in got] == [
        (2, 11, "line 11: 2 fields, the header has 3"),
        (3, 12, "line 12: 5 fields, the header has 3"),
        (4, 13, "line 13: 1 field, the header has 3"),
    ]
    assert got[0]["values"] == {"id": "002", "name": "bob", "kind": ""}
    assert got[0]["extra"] == []
    assert got[1]["values"] == {"id": "003", "name": "eve", "kind": "b"}
    assert got[1]["extra"] == ["x", "y,z"]


def test_malformed_quoting_is_rejected_with_the_raw_record() -> None:
    out = run('id,name\n001,"ab"c\n002,ok\n')
    assert out.rows_out == 1
    (got,) = rejected(out)
    assert got["reason"].startswith("line 2: malformed quoting")
    assert got["extra"] == ['001,"ab"c']


def test_unterminated_quote_in_a_chunk_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"^input/t.csv: line 4: a quoted field"):
        run('id,name\n001,a\n002,b\n003,"c\n', first_line=2)


@pytest.mark.parametrize("data", [b"", b"\r\n\n", b"\xef\xbb\xbf"])
def test_process_chunk_refuses_an_empty_file(data: bytes) -> None:
    with pytest.raises(InputError, match=r"^input/t\.csv is empty: expected a header row"):
        run(data)


def test_missing_column_fails_the_whole_file() -> None:
    with pytest.raises(InputError) as err:
        run("id,kind\n001,a\n")
    assert str(err.value) == "input/t.csv: header lacks required column 'name'"


def test_extra_columns_are_kept_after_schema_columns() -> None:
    out = run("zzz,name,id,aaa\n1,ann,001,2\n")
    assert out.output_header == ["id", "name", "kind", "zzz", "aaa"]
    assert parse(out.output) == [["001", "ann", "", "1", "2"]]


def test_extra_columns_refused_when_additional_properties_false() -> None:
    strict = RecordSchema.from_dict(
        {"properties": {"id": {}, "name": {}}, "additionalProperties": False}, source="s.json"
    )
    assert run("name,id\nann,001\n", schema=strict).output == b"001,ann\n"
    with pytest.raises(InputError, match="unexpected column 'aaa'"):
        run("id,name,aaa\n001,ann,2\n", schema=strict)


def test_schema_violations_are_rejected_with_reasons() -> None:
    out = run(
        "id,name,kind\n001,ann,a\n01,ann,a\n002,,b\n003,bobby-long,c\n004,ümlaut,\n005,ü1234,b\n"
    )
    assert out.rows_in == 6
    assert parse(out.output) == [["001", "ann", "a"], ["005", "ü1234", "b"]]
    assert [(r["row"], r["line"], r["reason"]) for r in rejected(out)] == [
        (2, 3, "id: does not match pattern ^[0-9]{3}$"),
        (3, 4, "name: missing required value"),
        (4, 5, "name: longer than 5 characters (maxLength 5); kind: not one of 'a', 'b' (enum)"),
        (5, 6, "name: longer than 5 characters (maxLength 5)"),
    ]
    assert rejected(out)[1]["values"] == {"id": "002", "name": "", "kind": "b"}


def test_multibyte_values_and_bom_inside_process_chunk() -> None:
    out = run("\ufeffid,name\n001,日本語です\n002,日本語ですよ\n")
    assert parse(out.output) == [["001", "日本語です", ""]]
    assert [r["reason"] for r in rejected(out)] == ["name: longer than 5 characters (maxLength 5)"]


def test_process_chunk_refuses_binary_and_invalid_utf8() -> None:
    with pytest.raises(InputError, match="looks binary"):
        run(b"id,name\n001,\x00\n")
    with pytest.raises(InputError, match=r"byte 0xff at line 3"):
        run(b"id,name\n001,a\n002,\xff\n")


def test_values_are_text_and_never_trimmed() -> None:
    out = run("id,name\n001, ann \n")
    assert out.output == b"001, ann ,\n"


def test_rejected_rows_keep_input_order_and_values() -> None:
    out = run("id,name\nx1,a\n001,ok\nx2,b\n002,ok\n")
    assert out.rejected_header == ["row", "line", "reason", "id", "name", "_extra"]
    assert parse(out.rejected) == [
        ["1", "2", "id: does not match pattern ^[0-9]{3}$", "x1", "a", ""],
        ["3", "4", "id: does not match pattern ^[0-9]{3}$", "x2", "b", ""],
    ]


def test_single_column_output_never_writes_blank_lines() -> None:
    one = RecordSchema.from_dict({"properties": {"a": {}}}, source="s.json")
    out = run('a\nx\n""\ny\n', schema=one)
    assert out.output == b'x\n""\ny\n'
    assert out.rows_out == 3


# ====================================================================== reference data
def test_reference_cache_holds_text_renamed_and_only_listed_columns(tmp_path: Path) -> None:
    ref_csv = tmp_path / "fin.csv"
    ref_csv.write_text(
        "\ufeffuuid,unitsSold,unitPrice,ignored\n000000123,0010,1495922.60,x\n2,3,4.0,y\n",
        encoding="utf-8",
    )
    enrichment = Enrichment("uuid", "uuid", {"unitPrice": "Unit Price", "unitsSold": "Units"})
    info = prepare_reference(ref_csv, tmp_path / "c" / "fin.parquet", enrichment, source="fin")
    assert info.rows == 2
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["fin.parquet"]
    table = ReferenceTable(tmp_path / "c" / "fin.parquet")
    got = table.lookup(pl.Series(["000000123", "nope", None]))
    assert got.columns == [REFERENCE_KEY_COLUMN, "Unit Price", "Units"]
    assert got.rows() == [("000000123", "1495922.60", "0010")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("uuid,price\n", "fin.csv: reference data has no rows"),
        ("", "fin.csv: "),
        ("uuid,cost\n1,2\n", "fin.csv: reference data lacks column 'price'"),
        ("id,price\n1,2\n", "fin.csv: reference data lacks column 'uuid'"),
        ("uuid,price\n1,2\n,3\n", "key column 'uuid' is empty on 1 row(s)"),
        (
            "uuid,price\n" + "".join(f"{k},1\n{k},2\n" for k in "abcdefg"),
            "duplicate keys in column 'uuid': 'a', 'b', 'c', 'd', 'e' and 2 more",
        ),
        ("uuid,price\n1,2\n3,4,5\n", "fin.csv: cannot parse the reference data"),
    ],
)
def test_bad_reference_data_is_refused_and_leaves_no_cache(
    tmp_path: Path, text: str, expected: str
) -> None:
    ref_csv = tmp_path / "fin.csv"
    ref_csv.write_text(text, encoding="utf-8")
    cache = tmp_path / "cache" / "fin.parquet"
    with pytest.raises(ReferenceDataError) as err:
        prepare_reference(ref_csv, cache, Enrichment("k", "uuid", {"price": "P"}), source="fin.csv")
    assert expected in str(err.value)
    assert not cache.parent.exists() or list(cache.parent.iterdir()) == []


def test_missing_reference_file_and_cache(tmp_path: Path) -> None:
    enrichment = Enrichment("k", "uuid", {"price": "P"})
    with pytest.raises(ReferenceDataError, match=r"^fin\.csv: cannot read"):
        prepare_reference(
            tmp_path / "none.csv", tmp_path / "c.parquet", enrichment, source="fin.csv"
        )
    with pytest.raises(ReferenceDataError, match="unreadable"):
        ReferenceTable(tmp_path / "none.parquet").lookup(pl.Series(["1"]))


def test_prepare_reference_replaces_an_existing_cache(tmp_path: Path) -> None:
    enrichment = Enrichment("k", "uuid", {"price": "P"})
    ref_csv, cache = tmp_path / "fin.csv", tmp_path / "fin.parquet"
    ref_csv.write_text("uuid,price\n1,old\n", encoding="utf-8")
    prepare_reference(ref_csv, cache, enrichment, source="fin.csv")
    ref_csv.write_text("uuid,price\n1,new\n2,two\n", encoding="utf-8")
    assert prepare_reference(ref_csv, cache, enrichment, source="fin.csv").rows == 2
    assert ReferenceTable(cache).lookup(pl.Series(["1"])).rows() == [("1", "new")]


def test_enrichment_configuration_is_checked() -> None:
    with pytest.raises(ConfigError):
        Enrichment("", "uuid", {})
    with pytest.raises(ConfigError, match="distinct"):
        Enrichment("a", "b", {"x": "Y", "z": "Y"})


def test_enrichment_key_and_output_collisions_fail_the_file(tmp_path: Path) -> None:
    ref_csv = tmp_path / "ref.csv"
    ref_csv.write_text("code,price\n001,1\n", encoding="utf-8")
    enrichment = Enrichment("code", "code", {"price": "name"})
    prepare_reference(ref_csv, tmp_path / "r.parquet", enrichment, source="ref.csv")
    table = ReferenceTable(tmp_path / "r.parquet")
    with pytest.raises(InputError, match="lacks column 'code', the key for reference data"):
        run("id,name\n001,a\n", enrichment=enrichment, reference=table)
    with pytest.raises(InputError, match="'name' is also an enrichment output column"):
        run("id,name,code\n001,a,001\n", enrichment=enrichment, reference=table)


# ====================================================================== merge helpers
def test_renumber_and_read_rejected_round_trip() -> None:
    out = run('id,name\nx,"multi\nline"\n001,ok\n1,"a""b",extra,"e\nf"\n')
    assert out.rows_rejected == 2
    shifted = renumber_rejected(out.rejected, 1000)
    got = read_rejected(shifted, out.rejected_header)
    assert [(r["row"], r["line"]) for r in got] == [(1001, 2), (1003, 5)]
    assert got[0]["values"] == {"id": "x", "name": "multi\nline"}
    assert got[1]["extra"] == ["extra", "e\nf"]
    assert shifted.replace(b"1001,", b"1,", 1).replace(b"1003,", b"3,", 1) == out.rejected
    assert read_rejected(shifted, ["id", "name"]) == got  # the input header works too
    assert renumber_rejected(out.rejected, 0) == out.rejected
    assert renumber_rejected(b"", 5) == b""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", 0),
        (b"a,b\n", 1),
        (b"a,b", 1),
        (b"a\n\nb\r\n\r\n", 2),
        (b'"x\n\ny",1\n2\n', 2),
        (b'""\n', 1),
        (b"\r", 0),
        (b"a\n\r", 1),
    ],
)
def test_count_records(body: bytes, expected: int) -> None:
    assert count_records(body) == expected


def test_count_records_refuses_unterminated_quote() -> None:
    with pytest.raises(InputError, match="line 2"):
        count_records(b'a\n"b\n')


def test_rejected_extra_is_json() -> None:
    out = run('id,name\n001,a,"b,""c"\n')
    (row,) = parse(out.rejected)
    assert json.loads(row[-1]) == ['b,"c']


# --------------------------------------------------------------------------- hardening


def test_cr_only_line_endings_are_named() -> None:
    data = "id,name,kind\r101,ann,a\r102,bob,b\r"
    with pytest.raises(InputError, match=r"end with CR alone") as caught:
        run(data)
    assert "LF" in (caught.value.hint or "")


def test_a_quoted_field_longer_than_the_csv_module_default_is_read_whole() -> None:
    long = "x" * (200 << 10)  # past the stdlib csv module's default 128 KiB field limit
    out = run(f'id,name,kind\n101,"{long}",a\n102,bob,b\n')
    assert (out.rows_out, out.rows_rejected) == (1, 1)
    [row] = rejected(out)  # `mrbatch errors` reads it back whole
    assert row["values"]["name"] == long and "longer than 5" in row["reason"]
    assert parse(out.output) == [["102", "bob", "b"]]


def test_formula_cells_are_escaped_only_when_asked() -> None:
    data = "id,name,kind\n101,=1+2,a\n102,@cmd,\n103,-5,b\n104,bob,b\n"
    wide = RecordSchema.from_dict(
        {"properties": {"id": {"type": "string"}, "name": {"type": "string"}}},
        source="wide.json",
    )
    plain = run(data, wide)
    assert [r[1] for r in parse(plain.output)] == ["=1+2", "@cmd", "-5", "bob"]
    escaped = run(data, wide, escape_formulas=True)
    assert [r[1] for r in parse(escaped.output)] == ["'=1+2", "'@cmd", "'-5", "bob"]
    assert [r[0] for r in parse(escaped.output)] == ["101", "102", "103", "104"]
