"""Property tests: conservation, path equivalence and split identity on generated, hostile CSV."""

from __future__ import annotations

import csv
import io
import re
import uuid
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrbatch.backends.localfs import LocalObjectStore
from mrbatch.engine.merge import MergeInput, merge
from mrbatch.errors import InputError
from mrbatch.pipeline import chunk, csvsplit, parse, reference
from mrbatch.pipeline import lines as lines_module
from mrbatch.pipeline.chunk import process_chunk
from mrbatch.pipeline.formats import csv_line, read_rejected, renumber_rejected
from mrbatch.pipeline.lines import parse_fast, parse_quoted_lines
from mrbatch.pipeline.parse import count_records
from tests.test_pipeline import SMALL

HEADER = ["id", "name", "kind"]
SCHEMA = SMALL  # the hand-written cases' schema: their header, their rules
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters chosen to hit every parser branch: separators, quotes, line breaks, multibyte.
fields = st.one_of(
    st.sampled_from(["001", "123", "12", "a", "b", "", "ann", "toolong", "é😀", " x "]),
    st.text(alphabet=',"\r\n aé😀01', max_size=6),
)
records = st.lists(fields, min_size=1, max_size=5)
# A line is a record or a blank line (None); the header has 3 columns, so lists of 1, 2, 4 or 5
# fields are ragged rows.
lines = st.lists(st.one_of(records, st.none()), max_size=25)


def needs_quotes(value: str) -> bool:
    return any(c in value for c in ',"\r\n')


def write(rows: list[list[str] | None], *, quote_all: bool, eol: str) -> str:
    """RFC 4180 text: quote when needed (or always); a lone empty field is written as ``""``."""
    out = []
    for row in rows:
        if row is None:
            out.append(eol)
            continue
        cells = [
            '"' + v.replace('"', '""') + '"' if quote_all or needs_quotes(v) or row == [""] else v
            for v in row
        ]
        out.append(",".join(cells) + eol)
    return "".join(out)


def oracle(text: str) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(text, newline="")) if r]


def expected_valid(row: list[str]) -> bool:
    if len(row) != 3:
        return False
    id_, name, kind = row
    return (
        re.fullmatch(r"[0-9]{3}", id_) is not None and 0 < len(name) <= 5 and kind in ("", "a", "b")
    )


def process(text: str, first_line: int = 2) -> chunk.ChunkOutput:
    return process_chunk(
        (",".join(HEADER) + "\n" + text).encode("utf-8"), schema=SCHEMA, enrichment=None,
        reference=None, first_line=first_line, source="p.csv",
    )  # fmt: skip


@SETTINGS
@given(lines, st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_rows_are_conserved_and_match_the_csv_module(
    rows: list[list[str] | None], eol: str, quote_all: bool
) -> None:
    text = write(rows, quote_all=quote_all, eol=eol)
    want = oracle(text)
    out = process(text)
    assert out.rows_in == out.rows_out + out.rows_rejected == len(want)
    assert count_records(text.encode("utf-8")) == len(want)
    assert oracle(out.output.decode("utf-8")) == [r for r in want if expected_valid(r)]
    got_rejected = read_rejected(out.rejected, out.rejected_header)
    assert [r["row"] for r in got_rejected] == [
        i + 1 for i, r in enumerate(want) if not expected_valid(r)
    ]
    for rej in got_rejected:
        record = want[rej["row"] - 1]
        assert list(rej["values"].values()) == [*record, "", "", ""][:3]
        assert rej["extra"] == record[3:]


@SETTINGS
@given(lines, st.sampled_from(["\n", "\r\n"]))
def test_fast_path_and_csv_path_agree(rows: list[list[str] | None], eol: str) -> None:
    minimal = process(write(rows, quote_all=False, eol=eol))
    quoted = process(write(rows, quote_all=True, eol=eol))
    assert minimal.output == quoted.output
    assert minimal.rejected == quoted.rejected
    assert (minimal.rows_in, minimal.rows_out) == (quoted.rows_in, quoted.rows_out)


# Quote-free hostile text: ragged rows, blank lines, lone and doubled CR, a BOM anywhere. Lines
# of exactly three fields are likely, so that the fast parser often accepts the text.
plain_field = st.text(alphabet="a1 é\ufeff\r", max_size=3)
plain_line = st.one_of(
    st.lists(plain_field, min_size=3, max_size=3).map(",".join),
    st.lists(plain_field, max_size=5).map(",".join),
)
plain_text = st.builds(
    lambda lines, eol, last: eol.join(lines) + (eol if last else ""),
    st.lists(plain_line, max_size=8),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)


def plain_text_is_regular(text: str) -> bool:
    lines = text.removesuffix("\n").split("\n")
    return (
        bool(text)
        and all(
            line.removesuffix("\r").count(",") == 2 and "\r" not in line.removesuffix("\r")
            for line in lines
        )
        and not text.startswith("\ufeff")
    )


@SETTINGS
@given(plain_text)
def test_fast_parser_accepts_only_what_the_general_parser_agrees_with(text: str) -> None:
    body = text.encode("utf-8")
    fast = parse_fast(body, HEADER, 2)
    good, bad = parse.parse_general(body, HEADER, 2, "p.csv")
    if plain_text_is_regular(text):
        assert fast is not None  # the fast path is taken whenever it can be
    if fast is not None:
        assert bad.height == 0
        assert fast.to_dicts() == good.to_dicts()
        assert fast.schema == good.schema


# Anything at all, including stray quotes and malformed quoting.
hostile = st.text(alphabet='a1,"\r\n é\ufeff', max_size=80)


@SETTINGS
@given(hostile, st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=9))
def test_hostile_input_is_conserved_or_refused_and_split_is_identity(
    text: str, chunk_rows: int, block_size: int
) -> None:
    data = ("id,name,kind\n" + text).encode("utf-8")
    try:
        whole = process(text)
    except InputError:
        whole = None
    try:
        chunks = list(
            csvsplit.split_csv(
                io.BytesIO(data), chunk_rows=chunk_rows, source="p.csv", block_size=block_size
            )
        )
    except InputError:
        assert whole is None  # split and process agree that the file is unusable
        return
    assert whole is not None
    assert whole.rows_in == whole.rows_out + whole.rows_rejected == count_records(text.encode())
    assert chunks[0].data[: chunks[0].header_size] + b"".join(c.body for c in chunks) == data
    # Chunk by chunk gives the same bytes as the whole file at once (after renumbering),
    # whether the header comes joined to the records or apart (as chunk tasks pass it).
    outputs, rejected, offset = [], [], 0
    for i, c in enumerate(chunks):
        apart = {"header_line": c.data[: c.header_size]} if i % 2 else {}
        part = process_chunk(
            c.body if apart else c.data, schema=SCHEMA, enrichment=None, reference=None,
            first_line=c.first_line, source="p.csv", **apart,
        )  # fmt: skip
        outputs.append(part.output)
        rejected.append(renumber_rejected(part.rejected, offset))
        offset += part.rows_in
    assert b"".join(outputs) == whole.output
    assert b"".join(rejected) == whole.rejected
    assert offset == whole.rows_in


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["001,ann,a", "002,bob,", "x,y,z", "1,2", ""]), max_size=40))
def test_output_is_deterministic(rows: list[str]) -> None:
    text = "\n".join(rows) + "\n"
    first, second = process(text), process(text)
    assert (first.output, first.rejected) == (second.output, second.rejected)
    assert first.rows_in == sum(1 for r in rows if r)


# --------------------------------------------------------------------------- issue 4, item 5
# What the properties above leave out: arbitrary bytes (not only text), the enrichment join, and
# the production MERGE (split -> chunk tasks -> merge.merge through a real object store).

# Byte pieces that hit every refusal path: NUL, invalid UTF-8, a BOM anywhere, lone CR, quotes.
hostile_bytes = st.one_of(
    st.binary(max_size=120),
    st.lists(
        st.sampled_from(
            [b"a", b"1", b"001", b",", b'"', b"\n", b"\r", b"\r\n", b"\x00", b"\xff", b"\xc3",
             b"\xef\xbb\xbf", "é".encode(), "😀".encode()]
        ),
        max_size=60,
    ).map(b"".join),
)  # fmt: skip


@SETTINGS
@given(hostile_bytes, st.booleans(), st.integers(min_value=1, max_value=4))
def test_arbitrary_bytes_never_crash(blob: bytes, with_header: bool, chunk_rows: int) -> None:
    """Any bytes at all: processing either refuses the file as a whole (InputError, with a
    reason) or conserves its rows; it never raises anything else."""
    data = (b"id,name,kind\n" if with_header else b"") + blob
    try:
        out = process_chunk(
            data, schema=SCHEMA, enrichment=None, reference=None, first_line=2, source="p.csv"
        )
    except InputError as exc:
        assert str(exc).strip()
    else:
        assert out.rows_in == out.rows_out + out.rows_rejected
    try:
        chunks = list(csvsplit.split_csv(io.BytesIO(data), chunk_rows=chunk_rows, source="p.csv"))
    except InputError as exc:
        assert str(exc).strip()
    else:
        assert chunks and all(c.data.endswith(c.body) for c in chunks)


ENRICH = reference.Enrichment(key="id", reference_key="ref", columns={"score": "Score"})
ids = st.sampled_from(["001", "002", "123", "999", "12", ""])


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ref")


def reference_table(directory: Path, scores: dict[str, str]) -> reference.ReferenceTable:
    name = uuid.uuid4().hex
    source = directory / f"{name}.csv"
    source.write_text(
        "ref,score\n" + "".join(f"{k},{v}\n" for k, v in scores.items()), encoding="utf-8"
    )
    cache = directory / f"{name}.parquet"
    reference.prepare_reference(source, cache, ENRICH, source="reference.csv")
    return reference.ReferenceTable(cache)


@SETTINGS
@given(
    st.lists(st.tuples(ids, st.sampled_from(["ann", "bob", "", "toolong"])), max_size=30),
    st.dictionaries(
        st.sampled_from(["001", "002", "123", "999"]),
        st.sampled_from(["1.50", "1495922.60", "007", "x"]),
        min_size=1,
    ),
)
def test_enrichment_conserves_rows_keeps_order_and_values(
    ref_dir: Path, rows: list[tuple[str, str]], scores: dict[str, str]
) -> None:
    text = "".join(f"{i},{n},a\n" for i, n in rows)
    out = process_chunk(
        ("id,name,kind\n" + text).encode(), schema=SCHEMA, enrichment=ENRICH,
        reference=reference_table(ref_dir, scores), first_line=2, source="p.csv",
    )  # fmt: skip
    assert out.rows_in == out.rows_out + out.rows_rejected == len(rows)
    valid = [(i, n) for i, n in rows if expected_valid([i, n, "a"])]
    # Values are carried as text, unchanged (no float or integer inference).
    want = [[i, n, "a", scores[i]] for i, n in valid if i in scores]
    assert oracle(out.output.decode()) == want
    assert out.output_header == [*HEADER, "Score"]
    rejected = read_rejected(out.rejected, out.rejected_header)
    assert [r["row"] for r in rejected] == [
        k for k, (i, n) in enumerate(rows, 1) if (i, n) not in valid or i not in scores
    ]
    assert all(
        "no reference data" in r["reason"]
        for r in rejected
        if expected_valid([r["values"]["id"], r["values"]["name"], "a"])
    )


reference_values = st.one_of(st.none(), st.text(alphabet=',"\r\n aé01', max_size=5))
reference_rows = st.dictionaries(
    st.sampled_from(["001", "002", "123", "999"]),
    st.tuples(reference_values, reference_values),
    min_size=1,
)
TWO_COLUMNS = reference.Enrichment("id", "ref", {"a": "A", "b": "B"})


def hostile_reference(directory: Path, data: dict[str, tuple[str | None, str | None]]) -> Path:
    """A reference whose values hold quotes, commas, line breaks, empty and missing values."""
    frame = pl.DataFrame(
        {"ref": list(data), "a": [a for a, _ in data.values()], "b": [b for _, b in data.values()]},
        schema=dict.fromkeys(["ref", "a", "b"], pl.String),
    )
    name = uuid.uuid4().hex
    frame.write_csv(directory / f"{name}.csv")  # quotes what needs it; None is an empty field
    cache = directory / f"{name}.parquet"
    reference.prepare_reference(directory / f"{name}.csv", cache, TWO_COLUMNS, source="r.csv")
    return cache


def held_and_scanned(body: bytes, cache: Path) -> tuple[chunk.ChunkOutput, chunk.ChunkOutput]:
    """The chunk with the reference held (its output written as text) and scanned (joined on
    columns, written by the CSV writer)."""
    held, scanned = (reference.ReferenceTable(cache, hold_max_bytes=n) for n in (1 << 30, 0))
    assert held.fields(pl.Series(["001"])) is not None  # held: the output is written as text
    assert scanned.fields(pl.Series(["001"])) is None

    def once(table: reference.ReferenceTable) -> chunk.ChunkOutput:
        return process_chunk(
            body, schema=SCHEMA, enrichment=TWO_COLUMNS, reference=table, first_line=2,
            source="p.csv",
        )  # fmt: skip

    return once(held), once(scanned)


@SETTINGS
@given(
    st.lists(
        st.tuples(
            ids, st.sampled_from(["ann", "", "toolong", " x ", "é😀"]), st.sampled_from("ab")
        ),
        min_size=1,
        max_size=30,
    ),
    reference_rows,
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
def test_a_plain_pipeline_writes_what_the_column_path_writes(
    ref_dir: Path,
    rows: list[tuple[str, str, str]],
    data: dict[str, tuple[str | None, str | None]],
    eol: str,
    final_eol: bool,
) -> None:
    """Quote-free lines in the header's order: each output row is its input line and the
    reference's fields as the cache holds them rendered (ReferenceTable.fields), the bytes the
    join on columns and the CSV writer give, whatever the reference values."""
    text = eol.join(",".join(row) for row in rows) + (eol if final_eol else "")
    held, scanned = held_and_scanned(
        ("id,name,kind" + eol + text).encode(), hostile_reference(ref_dir, data)
    )
    assert held == scanned
    assert held.rows_in == len(rows)


# Records by column name, most of them valid (so most reach the output) but with values that
# need quotes, and some ragged (None: a field too many).
valued = st.fixed_dictionaries(
    {
        "id": ids,
        "name": st.sampled_from(
            ["ann", "a,b", 'a"b', "a\nb", "a\r\nb", "é😀", " x ", "", "toolong"]
        ),
        "kind": st.sampled_from(["a", "b", ""]),
    }
)


@SETTINGS
@given(
    st.lists(st.one_of(valued, st.none()), min_size=1, max_size=25),
    reference_rows,
    st.sampled_from([["id", "name", "kind"], ["name", "id"], ["kind", "id", "name"]]),
    st.booleans(),
    st.sampled_from(["\n", "\r\n"]),
)
def test_any_chunk_written_as_text_is_what_the_column_path_writes(
    ref_dir: Path,
    records: list[dict[str, str] | None],
    data: dict[str, tuple[str | None, str | None]],
    header: list[str],
    quote_all: bool,
    eol: str,
) -> None:
    """Quoted and multi-line values, ragged records, columns out of the schema's order or
    missing: with the reference held, the output's input columns are rendered as text, and the
    bytes are the column path's."""
    rows = [[r[c] for c in header] if r is not None else ["001", "ann", "a", "x"] for r in records]
    body = (",".join(header) + eol + write(rows, quote_all=quote_all, eol=eol)).encode()
    held, scanned = held_and_scanned(body, hostile_reference(ref_dir, data))
    assert held == scanned


@SETTINGS
@given(
    st.lists(
        st.tuples(
            ids, st.sampled_from(["ann", "", "toolong", " x ", "é😀"]), st.sampled_from("ab")
        ).flatmap(lambda row: st.tuples(st.just(row), st.tuples(*[st.booleans()] * 3))),
        min_size=1,
        max_size=30,
    ),
    reference_rows,
)
def test_an_export_quoted_where_no_quote_is_needed_is_written_as_its_lines_unquoted(
    ref_dir: Path,
    rows: list[tuple[tuple[str, str, str], tuple[bool, bool, bool]]],
    data: dict[str, tuple[str | None, str | None]],
) -> None:
    """Values that need no quotes, quoted or not at random (as exports quote every field, or
    every text field): each output row is its line with the quotes removed (QuotedLines.
    plain_unquoted), the bytes the join on columns and the CSV writer give."""
    text = "".join(
        ",".join(f'"{v}"' if q else v for v, q in zip(values, quoted, strict=True)) + "\n"
        for values, quoted in rows
    )
    body = ("id,name,kind\n" + text).encode()
    if any(any(quoted) for _, quoted in rows):
        parsed = parse_quoted_lines(body.split(b"\n", 1)[1], HEADER, 2)
        assert parsed is not None and parsed.plain_unquoted
    held, scanned = held_and_scanned(body, hostile_reference(ref_dir, data))
    assert held == scanned
    assert held.rows_in == len(rows)


@pytest.fixture(scope="module")
def merge_store(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    return LocalObjectStore(tmp_path_factory.mktemp("merge") / "bucket", "test-1")


@SETTINGS
@given(hostile, st.integers(min_value=1, max_value=4), st.booleans())
def test_split_then_production_merge_is_the_identity(
    merge_store: LocalObjectStore, ref_dir: Path, text: str, chunk_rows: int, enrich: bool
) -> None:
    """SPLIT, one chunk task per chunk, then the MERGE the orchestrator uses (through an object
    store, with its checksum and row-count checks) give exactly the bytes of processing the
    whole file at once."""
    data = ("id,name,kind\n" + text).encode("utf-8")
    reference = reference_table(ref_dir, {"001": "1.0", "123": "2.5"}) if enrich else None
    enrichment = ENRICH if enrich else None
    try:
        whole = process_chunk(
            data, schema=SCHEMA, enrichment=enrichment, reference=reference, first_line=2,
            source="p.csv",
        )  # fmt: skip
        chunks = list(csvsplit.split_csv(io.BytesIO(data), chunk_rows=chunk_rows, source="p.csv"))
    except InputError:
        return  # refused as a whole: covered by the hostile-input property above
    run_id = uuid.uuid4().hex[:20]
    parts = []
    for c in chunks:
        part = process_chunk(
            c.data, schema=SCHEMA, enrichment=enrichment, reference=reference,
            first_line=c.first_line, source="p.csv",
        )  # fmt: skip
        out = merge_store.put(f"runs/{run_id}/out/{c.index:05d}.csv", part.output)
        rej = merge_store.put(f"runs/{run_id}/rejected/{c.index:05d}.csv", part.rejected)
        parts.append(
            MergeInput(c.index, part.rows_in, part.rows_out, out.key, out.sha256, rej.key,
                       rej.sha256)
        )  # fmt: skip
    result = merge(
        merge_store, run_id, whole.output_header, whole.rejected_header, iter(parts), epoch=1
    )
    merged = merge_store.get(result.output_key)
    merged_rejected = merge_store.get(result.rejected_key)
    assert merged == csv_line(whole.output_header) + whole.output
    assert merged_rejected == csv_line(whole.rejected_header) + whole.rejected
    assert (result.rows_out, result.rows_rejected) == (whole.rows_out, whole.rows_rejected)
    assert whole.rows_in == result.rows_out + result.rows_rejected


quoted_hostile = st.builds(
    "\n".join, st.lists(st.text(alphabet='a1,"\r\n é', max_size=24), max_size=8)
)


@SETTINGS
@given(quoted_hostile)
def test_the_quoted_fast_path_reads_exactly_what_the_csv_module_reads(text: str) -> None:
    """Records with quotes go through polars' reader when they are well formed (and through
    the csv module otherwise): every record it takes must read as the csv module reads it."""
    try:
        records = parse._records(text, 2, "p.csv")
    except InputError:
        return  # an unterminated quote fails the file before any record is read
    quoted = records.filter(pl.col(parse.QUOTES) > 0)
    fast = parse._parse_quoted_fast(quoted, HEADER)
    if fast is None:
        return
    texts = dict(zip(quoted.get_column(parse.ROW), quoted.get_column(parse.TEXT), strict=True))
    for row in fast.iter_rows(named=True):
        [expected] = list(csv.reader([texts[row[parse.ROW]]], strict=True))
        assert [row[c] or "" for c in HEADER] == expected


def test_the_quoted_fast_path_takes_spreadsheet_exports() -> None:
    text = '"101","ann ""the"" first","a"\n"102","two\nlines, and a comma",""\n103,bob,b\n'
    records = parse._records(text, 2, "p.csv")
    fast = parse._parse_quoted_fast(records.filter(pl.col(parse.QUOTES) > 0), HEADER)
    assert fast is not None and fast.get_column(parse.ROW).to_list() == [1, 2]
    assert fast.row(0)[2:] == ("101", 'ann "the" first', "a")
    assert fast.row(1)[2:4] == ("102", "two\nlines, and a comma")
    malformed = parse._records('"101","a"b"","a"\n', 2, "p.csv")  # left to the csv module
    assert parse._parse_quoted_fast(malformed, HEADER) is None


# Lines that are mostly well-formed records of three fields, plain or quoted (inner quotes
# doubled, delimiters and blanks inside), with a hostile line now and then.
_plain_field = st.text(alphabet="a1 é", max_size=4)
_quoted_field = st.text(alphabet='a1, é"', max_size=4).map(
    lambda v: '"' + v.replace('"', '""') + '"'
)
_record = st.lists(_plain_field | _quoted_field, min_size=3, max_size=3).map(",".join)
export_like = st.builds(
    lambda lines, end: "\n".join(lines) + end,
    st.lists(_record | st.text(alphabet='a1,"\r\n é', max_size=12), max_size=8),
    st.sampled_from(["", "\n"]),
)


@SETTINGS
@given(export_like, st.sampled_from([parse.CSV, parse.Dialect(";", "'")]))
def test_the_whole_body_quoted_path_agrees_with_the_general_path(
    text: str, dialect: parse.Dialect
) -> None:
    """A body whose every line is one well-formed record goes to polars' reader in one pass;
    whatever it takes, it reads exactly as the general path (and so the csv module) does."""
    text = text.replace(",", dialect.delimiter).replace('"', dialect.quote)
    body = text.encode("utf-8")
    whole = parse_quoted_lines(body, HEADER, 2, dialect)
    # The shape is proven piece by piece (about 1 MB each): pieces of a few bytes agree too.
    default, lines_module._CHECK_PIECE = lines_module._CHECK_PIECE, 5
    try:
        pieces = parse_quoted_lines(body, HEADER, 2, dialect)
    finally:
        lines_module._CHECK_PIECE = default
    assert (pieces is None) == (whole is None)
    if whole is None:
        return
    assert pieces is not None and pieces.frame.equals(whole.frame)
    assert pieces.plain_unquoted == whole.plain_unquoted
    good, bad = parse.parse_general(body, HEADER, 2, "p.csv", dialect)
    assert bad.height == 0
    assert whole.frame.to_dicts() == good.to_dicts()
    assert whole.frame.schema == good.schema
    if whole.plain_unquoted:  # each line, its quotes removed, is its values joined
        joined = [
            dialect.delimiter.join(v or "" for v in row)
            for row in whole.frame.select(HEADER).rows()
        ]
        assert [line.replace(dialect.quote, "") for line in text.splitlines()] == joined
        values = [v for row in whole.frame.select(HEADER).rows() for v in row if v is not None]
        assert not any(c in v for v in values for c in (dialect.delimiter, dialect.quote, "\n"))


@SETTINGS
@given(st.text(alphabet="ab\n", max_size=40), st.integers(1, 9))
def test_pieces_are_whole_lines_that_join_back_to_the_body(text: str, size: int) -> None:
    body = text.encode()
    pieces = lines_module._whole_lines(body, size)
    assert b"".join(pieces) == body
    assert all(pieces) and all(p.endswith(b"\n") for p in pieces[:-1])
    # each ends at the first line end at or beyond `size` bytes
    assert all(p.find(b"\n", size - 1) == len(p) - 1 for p in pieces[:-1])


def test_the_whole_body_quoted_path_takes_exports_and_leaves_the_rest() -> None:
    export = b'"101","ann ""the"" first","a"\n"102","",""\n"103","bob","b"'
    whole = parse_quoted_lines(export, HEADER, 5)
    assert whole is not None and not whole.plain_unquoted  # a quote inside a value
    assert whole.frame.rows() == [
        (1, 5, "101", 'ann "the" first', "a"), (2, 6, "102", None, None), (3, 7, "103", "bob", "b")
    ]  # fmt: skip
    plain = parse_quoted_lines(b'"101","ann",""\n102,"bob","b"\n', HEADER, 2)
    assert plain is not None and plain.plain_unquoted
    assert plain.frame.rows() == [(1, 2, "101", "ann", None), (2, 3, "102", "bob", "b")]
    comma = parse_quoted_lines(b'"101","ann, the first","a"\n', HEADER, 2)
    assert comma is not None and not comma.plain_unquoted
    for other in (
        '"101","two\nlines","a"\n',  # a line break inside quotes: line numbers need records
        '"101","a"b"","a"\n',  # malformed quoting: the csv module decides
        '"101","a"\n',  # ragged
        '"101","a","b"\n\n"102","c","d"\n',  # a blank line
        '"101","a","b"\r\n',  # CR
    ):
        assert parse_quoted_lines(other.encode(), HEADER, 2) is None, other
