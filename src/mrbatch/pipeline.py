"""Record pipeline: split a CSV stream into chunks, validate and enrich a chunk, all vectorised.

Every function here is pure over bytes (plus the reference cache file): the orchestrator moves
bytes between the object store and these functions, so the same input, schema and reference data
always give byte-identical output.

CSV dialect (RFC 4180, made precise)
    Records are separated by ``\\n``; a ``\\r`` just before it is dropped (CRLF input). A record
    may span lines inside a quoted field: ``"`` toggles quoting and ``""`` inside quotes is an
    escaped quote, so a newline ends a record exactly when the count of ``"`` since the record
    started is even. Blank lines (empty, or a lone ``\\r``) outside quotes are not records: they
    are skipped, never counted, never rejected (they keep their physical line numbers, so line
    numbers in reasons match what an editor shows). A ``\\r`` anywhere else is data. Fields of a
    record without ``"`` are split on every comma; a record with ``"`` is parsed by the stdlib
    ``csv`` module in strict mode, and one it refuses (``"ab"c``, a line break outside quotes) is
    rejected with the reason, never silently repaired. (A stray ``"`` inside an unquoted field
    still counts for record boundaries, which must be found without parsing fields.)

Speed
    A chunk without ``"`` (and without lone ``\\r``) is parsed by polars' own multi-threaded CSV
    reader, accepted only when a comma count proves no record is ragged; anything else takes the
    general path, which is still vectorised for every record without ``"``. Both give identical
    results for the same records (property-tested).

Output
    CSV rows without header, ``\\n`` line ends, UTF-8, minimal quoting. An empty value is
    written as nothing (not ``""``), except in a one-column file, where it must be ``""`` so
    the row is not a blank line.

Rejected rows
    CSV rows ``row, line, reason, <input columns...>, _extra``; ``row`` is the 1-based index of
    the record among the chunk's records (the merge adds earlier chunks' counts with
    :func:`renumber_rejected`), ``line`` the physical line where it starts, ``_extra`` a JSON
    array of the fields beyond the header's count (for a malformed record: its raw text).
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Final

import polars as pl

from mrbatch.errors import ConfigError, InputError, ReferenceDataError
from mrbatch.schema import RecordSchema

__all__ = [
    "MAX_RECORD_BYTES",
    "REFERENCE_KEY_COLUMN",
    "ChunkOutput",
    "Enrichment",
    "ReferenceInfo",
    "ReferenceTable",
    "SplitChunk",
    "count_records",
    "prepare_reference",
    "process_chunk",
    "read_rejected",
    "reference_cache_tag",
    "renumber_rejected",
    "split_csv",
]

_BOM = b"\xef\xbb\xbf"
# Internal column names start with NUL: input text never contains NUL (it is refused as binary),
# so they can never collide with a header name.
_ROW, _LINE, _TEXT, _QUOTES, _EXTRA, _REASON, _HIT = (
    "\0row",
    "\0line",
    "\0text",
    "\0quotes",
    "\0extra",
    "\0reason",
    "\0hit",
)
# Name of the key column in a reference cache file (output names may not use it).
REFERENCE_KEY_COLUMN = "__mrbatch_key"
# Reference cache layout and lookup, chosen by measurement (1M-row reference, 250k random keys
# per lookup, 2 cores, best of 4): Parquet lz4 with 64k-row groups + is_in filter pushed into
# the scan 68 ms / +77 MiB RSS; zstd 64k 81 ms; zstd 16k 100 ms; uncompressed 69 ms but 27 MB
# on disk vs 22 MB; IPC (scan_ipc + filter) 89 ms / +233 MiB, no row-level pushdown; Parquet
# sorted by key 70 ms (random keys skip no row group); lazy semi-join instead of is_in 51 ms
# but +190 MiB (it reads every column of every row); parallel="prefiltered" same as "auto";
# reading the whole cache is 22 ms but materialises the whole reference in every worker.
# A u64-hash prefilter took 31 ms, but polars' hash is not stable across versions or CPUs, and
# a cache built by one worker is read by others, so it was not adopted.
_REF_COMPRESSION: Final = "lz4"
_REF_ROW_GROUP = 65_536
# The cache also holds a 64-bit hash of each key, so a lookup filters on integers (61 ms
# instead of 89 ms for 100k keys against 1M rows, one thread); the join afterwards compares the
# real keys, so a hash collision can only fetch one row too many, never a wrong one. polars'
# hash may change between polars versions and CPUs: reference_cache_tag() goes into the cache
# file name, so a cache built with another hash is never read, only rebuilt.
_REF_HASH_COLUMN: Final = "__mrbatch_hash"
_REF_HASH_SEED: Final = 7_919
# A single record longer than this is refused: it is what an unterminated quote or a file
# without line breaks looks like, and the splitter would otherwise hold it all in memory.
MAX_RECORD_BYTES = 64 << 20


# ================================================================== splitting
@dataclass(frozen=True)
class SplitChunk:
    """One chunk of a CSV file: the header line followed by whole records, bytes as in the file.

    ``first_line`` is the physical line (header = line 1) of the chunk's first record line and
    ``lines`` the number of physical lines of records in it, so the next chunk starts at
    ``first_line + lines``. ``header_size`` is the length of the header prefix of ``data``.
    """

    index: int
    data: bytes
    first_line: int
    lines: int
    header_size: int

    @property
    def body(self) -> bytes:
        """The records of this chunk, without the header."""
        return self.data[self.header_size :]


class _Reader:
    """A growing window over a binary stream: at most one chunk plus one block is held."""

    def __init__(self, stream: BinaryIO, block_size: int) -> None:
        self.stream = stream
        self.block_size = block_size
        self.buf = bytearray()
        self.base = 0  # file offset of buf[0]
        self.eof = False

    def more(self) -> bool:
        if self.eof:
            return False
        block = self.stream.read(self.block_size)
        if not block:
            self.eof = True
            return False
        self.buf += block
        return True

    def take(self, end: int, prefix: bytes = b"") -> bytes:
        """Remove and return ``prefix + buf[:end]`` (one copy of the bytes)."""
        with memoryview(self.buf) as view:
            out = prefix + view[:end]
        del self.buf[:end]
        self.base += end
        return out


def split_csv(
    stream: BinaryIO,
    *,
    chunk_rows: int,
    source: str,
    block_size: int = 8 << 20,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[SplitChunk]:
    """Yield chunks of about ``chunk_rows`` physical lines each, never splitting a record.

    A chunk holds exactly ``chunk_rows`` lines unless its last record continues on further lines
    (a quoted newline) or the file ends, so chunk boundaries depend only on the bytes and
    ``chunk_rows``, never on ``block_size``. Concatenating the chunk bodies gives back the file
    after the header byte for byte. A header-only file yields one chunk without records. The
    leading UTF-8 BOM is dropped. Raises InputError for an empty or binary file, invalid UTF-8,
    a quoted field still open at the end of the file and a line or quoted record longer than
    ``max_record_bytes`` (so memory stays bounded by a chunk plus a block even then).
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    r = _Reader(stream, max(1, block_size))
    while len(r.buf) < 3 and r.more():
        pass
    if r.buf.startswith(_BOM):
        r.take(3)
    # A binary file may have no line break at all: say so before looking for the header's end.
    _check_nul(r.buf, 0, len(r.buf), r.base, 1, source)
    header_end, header_lines = _cut_after(r, 0, 1, source, line=1, limit=max_record_bytes)
    if not r.buf[:header_end].strip():
        _raise_blank_header(r, header_end, source)
    _check_text(r.buf, 0, header_end, r.base, 1, source)
    header = r.take(header_end)
    line = 1 + header_lines
    index = 0
    while r.buf or r.more():
        end, lines = _cut_after(r, 0, chunk_rows, source, line=line, limit=max_record_bytes)
        _check_text(r.buf, 0, end, r.base, line, source)
        yield SplitChunk(index, r.take(end, prefix=header), line, lines, len(header))
        index += 1
        line += lines
    if index == 0:
        yield SplitChunk(0, header, line, 0, len(header))


def _cut_after(
    r: _Reader, start: int, want: int, source: str, *, line: int, limit: int
) -> tuple[int, int]:
    """(end, lines): end of ``want`` physical lines from ``start``, extended to a record end.

    Reads more blocks as needed; at end of file returns the rest of the buffer. ``line`` is the
    physical line number at ``start`` (for error messages); a line or a quoted record growing
    past ``limit`` bytes is an InputError.
    """
    pos, remaining, counted = start, want, 0
    line_start = start  # start of the line still being read (for the length limit)
    while True:
        n = r.buf.count(b"\n", pos)
        if n >= remaining:
            nl = _nth_newline(r.buf, pos, len(r.buf), remaining, n)
            end, counted = nl + 1, counted + remaining
            break
        if n:
            line_start = r.buf.rfind(b"\n", pos) + 1
        counted += n
        remaining -= n
        pos = len(r.buf)
        if pos - line_start > limit:
            at = line + counted
            raise InputError(
                f"{source}: line {at} is longer than {_size(limit)}: "
                "expected CSV text with one record per line",
                hint="check that the file is a CSV export",
            )
        if not r.more():
            end = len(r.buf)
            if end > start and not r.buf.endswith(b"\n"):
                counted += 1
            break
    # Extend while inside a quoted field: parity of '"' since the (unquoted) start.
    quotes = r.buf.count(b'"', start, end)
    unquoted_end = end
    while quotes % 2:
        nl = r.buf.find(b"\n", end)
        while nl < 0 and len(r.buf) - unquoted_end <= limit and r.more():
            nl = r.buf.find(b"\n", end)
        if nl < 0 and end < len(r.buf) and r.eof:  # last line, without a line break
            quotes += r.buf.count(b'"', end)
            counted += 1
            end = len(r.buf)
            continue
        if nl < 0 or nl - unquoted_end > limit:
            opener = r.buf.rfind(b'"', start, end)
            at = line + r.buf.count(b"\n", start, opener)
            still = "never closed (unterminated quote at end of file)"
            if not r.eof or nl >= 0:
                still = f"still open {_size(limit)} later (unterminated quote?)"
            raise InputError(
                f"{source}: line {at}: a quoted field opened here is {still}",
                hint='close the quote, or double a quote that belongs to the value ("")',
            )
        quotes += r.buf.count(b'"', end, nl + 1)
        counted += 1
        end = nl + 1
    return end, counted


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def _nth_newline(buf: bytearray, lo: int, hi: int, k: int, total: int) -> int:
    """Index of the k-th ``\\n`` in buf[lo:hi] (1-based k, ``total`` = count in the range).

    Interpolation search over C-level counts narrows the range (lines are usually of similar
    length, so few counts are needed); a plain find loop finishes the last few lines.
    """
    step = 0
    while total > 32 and k > 1:
        # Interpolate, alternating with bisection so that skewed line lengths still converge.
        mid = lo + (hi - lo) * k // (total + 1) if step % 2 == 0 else (lo + hi) // 2
        mid = min(max(mid, lo + 1), hi - 1)
        step += 1
        c = buf.count(b"\n", lo, mid)
        if c >= k:
            hi, total = mid, c
        else:
            lo, k, total = mid, k - c, total - c
    pos = lo - 1
    for _ in range(k):
        pos = buf.find(b"\n", pos + 1, hi)
    return pos


def _raise_blank_header(r: _Reader, header_end: int, source: str) -> None:
    while True:
        if r.buf[header_end:].strip():
            raise InputError(
                f"{source}: line 1 is blank: expected a header row naming the columns",
                hint="remove the blank lines before the header",
            )
        del r.buf[header_end:]
        if not r.more():
            raise InputError(
                f"{source} is empty: expected a header row naming the columns, "
                "then one record per line",
                hint="upload a CSV file with a header and records",
            )


def _check_nul(
    buf: bytes | bytearray, start: int, end: int, base: int | None, line: int, source: str
) -> None:
    nul = buf.find(b"\0", start, end)
    if nul >= 0:
        at = line + buf.count(b"\n", start, nul)
        where = f"offset {base + nul}, line {at}" if base is not None else f"line {at}"
        raise InputError(
            f"{source} looks binary (NUL byte at {where}): expected UTF-8 CSV text",
            hint="upload the CSV export, not a spreadsheet or compressed file",
        )


def _check_text(
    buf: bytes | bytearray, start: int, end: int, base: int | None, line: int, source: str
) -> None:
    """Raise InputError if buf[start:end] holds a NUL byte or is not UTF-8.

    ``base`` is the file offset of buf[0] (None when unknown: the offset is then not reported),
    ``line`` the physical line at ``start``.
    """
    _check_nul(buf, start, end, base, line, source)
    with memoryview(buf)[start:end] as view:
        try:
            str(view, "utf-8")  # CPython's decoder has an ASCII fast path; ~3 ms for 20 MB
        except UnicodeDecodeError as exc:
            bad = start + exc.start
            at = line + buf.count(b"\n", start, bad)
            where = f"offset {base + bad} (line {at})" if base is not None else f"line {at}"
            raise InputError(
                f"{source} is not valid UTF-8: byte 0x{buf[bad]:02x} at {where}; "
                "save the file as UTF-8",
                hint="re-export the file with UTF-8 encoding",
            ) from None


# ================================================================== reference data
@dataclass(frozen=True)
class Enrichment:
    """Join rule: input column ``key`` matches reference column ``reference_key``; ``columns``
    maps reference column names to output column names, in output order."""

    key: str
    reference_key: str
    columns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key or not self.reference_key:
            raise ConfigError("enrichment: key and reference_key must be non-empty")
        outputs = list(self.columns.values())
        if any(not name for name in outputs) or len(set(outputs)) != len(outputs):
            raise ConfigError(
                f"enrichment: output column names must be non-empty and distinct, got {outputs}"
            )
        if REFERENCE_KEY_COLUMN in outputs:
            raise ConfigError(
                f"enrichment: output column name {REFERENCE_KEY_COLUMN!r} is reserved"
            )


@dataclass(frozen=True)
class ReferenceInfo:
    """What :func:`prepare_reference` found: the number of reference rows."""

    rows: int


def prepare_reference(
    csv_path: str | Path, cache_path: str | Path, enrichment: Enrichment, *, source: str
) -> ReferenceInfo:
    """Check a reference CSV and write its columnar cache atomically; return its row count.

    Every value is read as text. The cache (Parquet) holds the key as
    ``REFERENCE_KEY_COLUMN`` and the listed columns under their output names. Raises
    ReferenceDataError (naming ``source``) for a missing file or column, no rows, an empty key or
    duplicate keys; on error no cache file is left behind. Streams, so memory stays low.
    """
    csv_path, cache_path = Path(csv_path), Path(cache_path)
    lf = pl.scan_csv(csv_path, infer_schema=False, raise_if_empty=False)
    try:
        names = lf.collect_schema().names()
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise _ref_error(source, f"cannot read the reference data: {_first_line(exc)}") from exc
    wanted = [enrichment.reference_key, *enrichment.columns]
    missing = [c for c in dict.fromkeys(wanted) if c not in names]
    if missing:
        raise _ref_error(
            source,
            f"reference data lacks column {', '.join(map(repr, missing))} "
            f"(it has {', '.join(map(repr, names))})",
        )
    lf = lf.select(
        pl.col(enrichment.reference_key).alias(REFERENCE_KEY_COLUMN),
        *[pl.col(src).alias(dst) for src, dst in enrichment.columns.items()],
        pl.col(enrichment.reference_key).hash(_REF_HASH_SEED).alias(_REF_HASH_COLUMN),
    )
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(f".{cache_path.name}.{secrets.token_hex(6)}.tmp")
    try:
        try:
            # Synced before the rename: a cache truncated by a crash would fail every run.
            lf.sink_parquet(
                tmp,
                compression=_REF_COMPRESSION,
                row_group_size=_REF_ROW_GROUP,
                sync_on_close="all",
            )
        except pl.exceptions.PolarsError as exc:
            detail = _first_line(exc)
            raise _ref_error(source, f"cannot parse the reference data: {detail}") from exc
        rows = _check_reference(tmp, enrichment, source)
        os.replace(tmp, cache_path)
    finally:
        tmp.unlink(missing_ok=True)
    return ReferenceInfo(rows=rows)


def reference_cache_tag() -> str:
    """A short tag naming the key hash this polars computes (see _REF_HASH_COLUMN)."""
    probe = pl.Series(["mrbatch-reference-probe"]).hash(_REF_HASH_SEED).item()
    return f"{int(probe) & 0xFFFFFFFF:08x}"


def _check_reference(path: Path, enrichment: Enrichment, source: str) -> int:
    keys = pl.scan_parquet(path).select(REFERENCE_KEY_COLUMN)
    stats = keys.select(
        pl.len().alias("rows"), pl.col(REFERENCE_KEY_COLUMN).null_count().alias("nulls")
    ).collect()
    rows, nulls = stats.item(0, "rows"), stats.item(0, "nulls")
    if rows == 0:
        raise _ref_error(source, "reference data has no rows")
    if nulls:
        raise _ref_error(
            source, f"reference key column {enrichment.reference_key!r} is empty on {nulls} row(s)"
        )
    dupes = (
        keys.group_by(REFERENCE_KEY_COLUMN)
        .len()
        .filter(pl.col("len") > 1)
        .select(REFERENCE_KEY_COLUMN)
        .sort(REFERENCE_KEY_COLUMN)
        .collect(engine="streaming")
        .to_series()
    )
    if len(dupes):
        shown = ", ".join(repr(k) for k in dupes.head(5).to_list())
        more = f" and {len(dupes) - 5} more" if len(dupes) > 5 else ""
        raise _ref_error(
            source,
            f"reference data has duplicate keys in column {enrichment.reference_key!r}: "
            f"{shown}{more}",
        )
    return int(rows)


def _ref_error(source: str, text: str) -> ReferenceDataError:
    return ReferenceDataError(
        f"{source}: {text}",
        hint="fix the reference CSV (one row per key, all listed columns) and upload it again",
    )


class ReferenceTable:
    """Read side of a reference cache written by :func:`prepare_reference`."""

    def __init__(self, cache_path: str | Path) -> None:
        self.path = Path(cache_path)

    def lookup(self, keys: pl.Series) -> pl.DataFrame:
        """Reference rows whose key is in ``keys`` (key column ``REFERENCE_KEY_COLUMN`` first).

        The filter is pushed into the Parquet scan, so only matching rows are materialised.
        """
        # Not .unique(): is_in copes with repeats and unique() costs more than it saves.
        wanted = keys.drop_nulls().cast(pl.String).hash(_REF_HASH_SEED)
        try:
            return (
                pl.scan_parquet(self.path)
                .filter(pl.col(_REF_HASH_COLUMN).is_in(wanted.implode()))
                .drop(_REF_HASH_COLUMN)
                .collect()
            )
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise ReferenceDataError(
                f"reference cache {self.path.name} is unreadable: {_first_line(exc)}",
                hint="prepare the reference data again",
            ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ================================================================== chunk processing
@dataclass(frozen=True)
class ChunkOutput:
    """Result of one chunk. ``output``/``rejected`` are CSV rows without header, ``\\n`` line
    ends, minimal quoting; ``rows_in == rows_out + rows_rejected``."""

    output: bytes
    rejected: bytes
    output_header: list[str]
    rejected_header: list[str]
    rows_in: int
    rows_out: int
    rows_rejected: int


def process_chunk(
    data: bytes,
    *,
    schema: RecordSchema,
    enrichment: Enrichment | None,
    reference: ReferenceTable | None,
    first_line: int,
    source: str,
) -> ChunkOutput:
    """Validate and enrich one chunk (header line + records) into output and rejected rows.

    ``first_line`` is the physical line of the first record (``SplitChunk.first_line``).
    Output columns: the schema's properties in schema order (an optional property the file
    lacks is empty), then the other input columns in input order, then the enrichment's output
    columns; rows keep input order. A record is rejected when its field count differs from the
    header's, when it breaks a schema rule, or when enrichment finds no reference row for it.
    Raises InputError only for problems of the whole file (binary, not UTF-8, header, an
    unterminated quote); every record problem becomes a rejected row with a reason.
    """
    if enrichment is not None and reference is None:
        raise ValueError("an enrichment needs a reference table")
    if data.startswith(_BOM):
        data = data[3:]
    header_end = _header_end(data, source)
    _check_text(data, 0, header_end, None, 1, source)
    header = _parse_header(data[:header_end], source)
    schema.check_header(header, source=source)
    if enrichment is not None:
        _check_enrichment_columns(header, schema, enrichment, source)
    body = data[header_end:]
    _check_text(body, 0, len(body), None, first_line, source)

    good = _parse_fast(body, header, first_line)
    bad: list[pl.DataFrame] = []
    if good is None:
        good, structural = _parse_general(body, header, first_line, source)
        bad.append(structural)
    rows_in = good.height + sum(b.height for b in bad)
    absent = [c for c in schema.properties if c not in header]
    if absent:  # optional properties the file does not have: empty values
        good = good.with_columns(pl.lit(None, pl.String).alias(c) for c in absent)

    valid_mask = good.with_columns(schema.valid_expr().alias("\0valid")).get_column("\0valid")
    if not valid_mask.all():
        invalid = good.filter(~valid_mask)
        bad.append(invalid.with_columns(schema.reasons_expr().alias(_REASON)))
        good = good.filter(valid_mask)

    out_cols = [pl.col(c) for c in schema.properties]
    out_cols += [pl.col(c) for c in header if c not in schema.properties]
    if enrichment is not None and reference is not None:
        good, missing = _enrich(good, enrichment, reference)
        bad.append(missing)
        out_cols += [pl.col(c) for c in enrichment.columns.values()]
    output = good.select(out_cols)
    rejected = _rejected_frame(bad, header)
    rejected_header = ["row", "line", "reason", *header, "_extra"]
    return ChunkOutput(
        output=_write_csv(output),
        rejected=_write_csv(rejected),
        output_header=output.columns,
        rejected_header=rejected_header,
        rows_in=rows_in,
        rows_out=output.height,
        rows_rejected=rejected.height,
    )


def _header_end(data: bytes, source: str) -> int:
    """Byte offset just after the header record (the first record, quote-aware)."""
    end = data.find(b"\n")
    end = len(data) if end < 0 else end + 1
    while data.count(b'"', 0, end) % 2:
        if end >= len(data):
            raise InputError(
                f"{source}: line 1: the header has a quoted name that is never closed",
                hint="close the quote in the header",
            )
        nxt = data.find(b"\n", end)
        end = len(data) if nxt < 0 else nxt + 1
    if not data[:end].strip():
        raise InputError(
            f"{source} is empty: expected a header row naming the columns, then one record per line"
            if not data.strip()
            else f"{source}: line 1 is blank: expected a header row naming the columns",
            hint="upload a CSV file with a header and records",
        )
    return end


def _parse_header(raw: bytes, source: str) -> list[str]:
    text = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    if '"' not in text:
        return text.split(",")
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise InputError(f"{source}: line 1: the header is not valid CSV: {exc}") from exc
    if len(rows) != 1:
        raise InputError(f"{source}: line 1: the header is not valid CSV")
    return rows[0]


def _check_enrichment_columns(
    header: Sequence[str], schema: RecordSchema, enrichment: Enrichment, source: str
) -> None:
    if enrichment.key not in header:
        raise InputError(
            f"{source}: header lacks column {enrichment.key!r}, the key for reference data",
            hint=f"add the column {enrichment.key!r}",
        )
    taken = set(header) | set(schema.properties)
    clash = [name for name in enrichment.columns.values() if name in taken]
    if clash:
        raise InputError(
            f"{source}: column {', '.join(map(repr, clash))} is also an enrichment output column",
            hint="rename the input column; enrichment adds it",
        )


def _parse_fast(body: bytes, header: list[str], first_line: int) -> pl.DataFrame | None:
    """Parse a quote-free body with polars' CSV reader, or None when the general path is needed.

    The reader cannot tell a missing field from an empty one, nor a blank line from a record of
    empty fields, so the result is accepted only when the comma total proves every line has
    exactly the header's field count (polars refuses longer rows itself). Lone ``\\r`` are sent
    to the general path because the reader drops a ``\\r`` before a comma, and so is a body
    starting with a BOM, which the reader would drop.
    """
    ncols = len(header)
    if ncols < 2 or not body or b'"' in body or body.startswith(_BOM):
        return None
    if b"\r" in body and body.count(b"\r") != body.count(b"\r\n") + body.endswith(b"\r"):
        return None
    lines = body.count(b"\n") + (not body.endswith(b"\n"))
    if body.count(b",") != (ncols - 1) * lines:
        return None
    try:
        df = pl.read_csv(
            body,
            has_header=False,
            schema=dict.fromkeys(header, pl.String),
            quote_char=None,
            empty_string_is_null=True,
            truncate_ragged_lines=False,
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError:
        return None
    if df.height != lines:
        return None
    index = pl.int_range(1, df.height + 1, dtype=pl.Int64)
    return df.select(index.alias(_ROW), (index + (first_line - 1)).alias(_LINE), pl.all())


def _parse_general(
    body: bytes, header: list[str], first_line: int, source: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(good, structural rejects) for any body: quoted fields, ragged rows, blank lines, CR.

    Records without ``"`` are split vectorised; only records with ``"`` go through the csv
    module, so a file with a few quoted values stays nearly as fast as the fast path.
    """
    records = _records(body.decode("utf-8"), first_line, source)
    ncols = len(header)
    names = [_ROW, _LINE, *header]
    plain = records.filter(pl.col(_QUOTES) == 0).with_columns(
        (pl.col(_TEXT).str.count_matches(",", literal=True) + 1).alias("\0n")
    )
    split = pl.col(_TEXT).str.split_exact(",", ncols - 1).struct.rename_fields(header)
    parts = [plain.filter(pl.col("\0n") == ncols).select(_ROW, _LINE, split).unnest(_TEXT)]

    bad_rows: list[tuple[Any, ...]] = []
    ragged = plain.filter(pl.col("\0n") != ncols)
    for row, line, text in ragged.select(_ROW, _LINE, _TEXT).iter_rows():
        bad_rows.append(_structural(row, line, text.split(","), ncols))

    quoted = records.filter(pl.col(_QUOTES) > 0)
    parsed = _parse_quoted(quoted.get_column(_TEXT).to_list())
    keep = [i for i, values in enumerate(parsed) if type(values) is list and len(values) == ncols]
    if len(keep) < len(parsed):
        kept = set(keep)
        for i, values in enumerate(parsed):
            if i in kept:
                continue
            row, line, raw = quoted.item(i, _ROW), quoted.item(i, _LINE), quoted.item(i, _TEXT)
            if isinstance(values, str):  # the csv module's complaint; keep the raw text
                reason = f"line {line}: malformed quoting: {values}"
                extra = json.dumps([raw], ensure_ascii=False)
                bad_rows.append((row, line, *([None] * ncols), extra, reason))
            else:
                bad_rows.append(_structural(row, line, values, ncols))
    if keep:
        rows = parsed if len(keep) == len(parsed) else [parsed[i] for i in keep]
        frame = pl.DataFrame(
            [pl.Series(name, list(map(itemgetter(j), rows)), pl.String)
             for j, name in enumerate(header)]
        )  # fmt: skip
        ids = quoted.select(_ROW, _LINE)[keep]
        parts.append(pl.concat([ids, frame], how="horizontal"))
    good = pl.concat(parts) if len(parts) > 1 else parts[0]
    if len(parts) > 1:
        good = good.sort(_ROW)
    good = good.with_columns([pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in header])

    types: dict[str, Any] = {_ROW: pl.Int64, _LINE: pl.Int64, **dict.fromkeys(header, pl.String)}
    bad_types = {**types, _EXTRA: pl.String, _REASON: pl.String}
    bad = pl.DataFrame(bad_rows, schema=bad_types, orient="row").sort(_ROW)
    return good.select(names), bad


def _parse_quoted(texts: list[str]) -> list[list[str] | str]:
    """Fields of each record text, or the csv module's complaint about it (strict mode).

    One reader over all records is much faster than one per record. It is trusted only when it
    yields exactly one row per record: a record the reader sees as unfinished swallows the next
    one (fewer rows) and a line break outside quotes raises, so any misalignment is detected and
    the records are then parsed one by one.
    """
    if not texts:
        return []
    try:
        # Hundreds of thousands of new lists would trigger many full garbage collections
        # (measured: half the time of this path); none of them can form a cycle.
        with _gc_paused():
            rows: list[list[str] | str] = list(csv.reader(texts, strict=True))
        if len(rows) == len(texts):
            return rows
    except csv.Error:
        pass
    out: list[list[str] | str] = []
    for text in texts:
        try:
            one = list(csv.reader([text], strict=True))
        except csv.Error as exc:
            out.append(str(exc))
            continue
        out.append(one[0] if len(one) == 1 else "a line break outside quotes")
    return out


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _structural(row: int, line: int, values: list[str], ncols: int) -> tuple[Any, ...]:
    padded = [v or None for v in values[:ncols]] + [None] * (ncols - len(values))
    extra = json.dumps(values[ncols:], ensure_ascii=False) if len(values) > ncols else None
    word = "field" if len(values) == 1 else "fields"
    reason = f"line {line}: {len(values)} {word}, the header has {ncols}"
    return (row, line, *padded, extra, reason)


def _records(text: str, first_line: int, source: str) -> pl.DataFrame:
    """Records of a body: ``_ROW`` (1-based), ``_LINE``, ``_TEXT`` (final ``\\r`` dropped) and
    ``_QUOTES`` (count of ``"``). Blank lines are dropped; InputError for an unterminated quote."""
    lines = pl.Series(_TEXT, [text]).str.split("\n").explode().to_frame()
    lines = lines.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_LINE))
    if '"' in text:
        lines = lines.with_columns(
            pl.col(_TEXT).str.count_matches('"', literal=True).cast(pl.Int64).alias(_QUOTES)
        )
        odd = (lines.get_column(_QUOTES).cum_sum() % 2) == 1  # inside quotes after this line
        if odd[-1]:
            opener = text.rfind('"')
            at = first_line + text.count("\n", 0, opener)
            raise InputError(
                f"{source}: line {at}: a quoted field opened here is never closed",
                hint='close the quote, or double a quote that belongs to the value ("")',
            )
        if odd.any():  # some record spans lines: group lines into records
            starts = (~odd.shift(1, fill_value=False)).cum_sum()
            lines = (
                lines.with_columns(starts.alias("\0rec"))
                .group_by("\0rec", maintain_order=True)
                .agg(pl.col(_TEXT).str.join("\n"), pl.col(_LINE).first(), pl.col(_QUOTES).sum())
                .drop("\0rec")
            )
    else:
        lines = lines.with_columns(pl.lit(0, pl.Int64).alias(_QUOTES))
    recs = lines.with_columns(pl.col(_TEXT).str.strip_suffix("\r")).filter(pl.col(_TEXT) != "")
    return recs.with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(_ROW),
        pl.col(_LINE) + first_line,
    )


def _enrich(
    good: pl.DataFrame, enrichment: Enrichment, reference: ReferenceTable
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(matched rows with reference columns, rejects for rows without reference data)."""
    ref = reference.lookup(good.get_column(enrichment.key))
    ref = ref.select(REFERENCE_KEY_COLUMN, *enrichment.columns.values()).with_columns(
        pl.lit(True).alias(_HIT)
    )
    joined = good.join(
        ref,
        left_on=enrichment.key,
        right_on=REFERENCE_KEY_COLUMN,
        how="left",
        maintain_order="left",
        coalesce=True,
    )
    hit = joined.get_column(_HIT).is_not_null()
    if hit.all():  # the usual case: skip copying every column through a filter
        none = joined.clear().with_columns(pl.lit(None, pl.String).alias(_REASON))
        return joined.drop(_HIT), none
    missing = joined.filter(~hit).with_columns(
        pl.format(
            "{}: no reference data for '{}'",
            pl.lit(enrichment.key),
            pl.col(enrichment.key).fill_null(""),
        ).alias(_REASON)
    )
    return joined.filter(hit).drop(_HIT), missing


def _rejected_frame(parts: list[pl.DataFrame], header: list[str]) -> pl.DataFrame:
    cols = [pl.col(_ROW), pl.col(_LINE), pl.col(_REASON), *map(pl.col, header)]
    no_extra = pl.lit(None, pl.String).alias(_EXTRA)
    frames = [p.select(*cols, pl.col(_EXTRA) if _EXTRA in p.columns else no_extra) for p in parts]
    if not frames:
        text = dict.fromkeys([_REASON, *header, _EXTRA], pl.String)
        return pl.DataFrame(schema={_ROW: pl.Int64, _LINE: pl.Int64, **text})
    return pl.concat(frames).sort(_ROW)


def _write_csv(df: pl.DataFrame) -> bytes:
    """CSV rows, no header, ``\\n``, minimal quoting; empty values are written as nothing.

    polars quotes an empty *string* (``""``) but writes null as nothing, so values are kept
    null when empty. A one-column row of an empty value would then be a blank line, which
    readers skip, so that case is written as ``""`` like the stdlib csv writer does.
    """
    if df.width == 1:
        df = df.select(pl.all().fill_null(""))
    buf = io.BytesIO()
    df.write_csv(buf, include_header=False, quote_style="necessary", line_terminator="\n")
    return buf.getvalue()


# ================================================================== helpers for merge / checks
def count_records(data: bytes) -> int:
    """Number of records in a CSV body without header (quote-aware; blank lines not counted).

    Raises InputError for a quoted field that is never closed.
    """
    if not data:
        return 0
    if b'"' not in data and not _may_have_blank_line(data):
        return data.count(b"\n") + (not data.endswith(b"\n"))  # C-level: ~8 ms for 30 MB
    text = data.decode("utf-8", errors="replace")
    return _records(text, 1, "data").height


def _may_have_blank_line(data: bytes) -> bool:
    return (
        b"\n\n" in data
        or b"\n\r\n" in data
        or data.startswith((b"\n", b"\r\n"))
        or data.endswith(b"\n\r")
        or data == b"\r"
    )


def renumber_rejected(data: bytes, offset: int) -> bytes:
    """Add ``offset`` to the ``row`` field of every rejected row; other bytes are unchanged."""
    if offset == 0 or not data:
        return data
    lines = pl.Series(_TEXT, [data.decode("utf-8")]).str.split("\n").explode().to_frame()
    quotes = pl.col(_TEXT).str.count_matches('"', literal=True).cast(pl.Int64)
    # A line starts a record when the quote count before it is even.
    starts = (quotes.cum_sum().shift(1, fill_value=0) % 2 == 0) & (pl.col(_TEXT) != "")
    number = pl.col(_TEXT).str.extract(r"^(\d+),", 1).cast(pl.Int64) + offset
    rest = pl.col(_TEXT).str.replace(r"^\d+", "")
    fixed = pl.when(starts).then(pl.concat_str(number.cast(pl.String), rest)).otherwise(_TEXT)
    return lines.select(fixed.str.join("\n")).item().encode("utf-8")


def read_rejected(data: bytes, header: list[str]) -> list[dict[str, Any]]:
    """Parse rejected rows (CSV without header line) for display.

    ``header`` is either the ``rejected_header`` the rows were written with or the input header
    (the columns between ``reason`` and ``_extra``); a row has 4 more fields than the input
    header, which tells the two apart. Returns one
    ``{"row": int, "line": int, "reason": str, "values": {column: value}, "extra": [...]}`` per
    row, in order.
    """
    out = []
    for rec in csv.reader(io.StringIO(data.decode("utf-8"), newline="")):
        if not rec:
            continue
        columns = header[3:-1] if len(header) == len(rec) else header
        out.append(
            {
                "row": int(rec[0]),
                "line": int(rec[1]),
                "reason": rec[2],
                "values": dict(zip(columns, rec[3:-1], strict=True)),
                "extra": json.loads(rec[-1]) if rec[-1] else [],
            }
        )
    return out
