"""Property tests: conservation, path equivalence and split identity on generated, hostile CSV."""

from __future__ import annotations

import csv
import io
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrbatch import pipeline
from mrbatch.errors import InputError
from mrbatch.pipeline import count_records, process_chunk, read_rejected, renumber_rejected
from mrbatch.schema import RecordSchema

HEADER = ["id", "name", "kind"]
SCHEMA = RecordSchema.from_dict(
    {
        "required": ["id", "name"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]{3}$"},
            "name": {"type": "string", "maxLength": 5},
            "kind": {"type": "string", "enum": ["a", "b"]},
        },
    },
    source="p.json",
)
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


def process(text: str, first_line: int = 2) -> pipeline.ChunkOutput:
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
    fast = pipeline._parse_fast(body, HEADER, 2)
    good, bad = pipeline._parse_general(body, HEADER, 2, "p.csv")
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
            pipeline.split_csv(
                io.BytesIO(data), chunk_rows=chunk_rows, source="p.csv", block_size=block_size
            )
        )
    except InputError:
        assert whole is None  # split and process agree that the file is unusable
        return
    assert whole is not None
    assert whole.rows_in == whole.rows_out + whole.rows_rejected == count_records(text.encode())
    assert chunks[0].data[: chunks[0].header_size] + b"".join(c.body for c in chunks) == data
    # Chunk by chunk gives the same bytes as the whole file at once (after renumbering).
    outputs, rejected, offset = [], [], 0
    for c in chunks:
        part = process_chunk(
            c.data, schema=SCHEMA, enrichment=None, reference=None,
            first_line=c.first_line, source="p.csv",
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
