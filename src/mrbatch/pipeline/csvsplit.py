"""Splitting a CSV stream into chunks of whole records, streaming: memory is one chunk plus one
block, whatever the size of the file.

CSV dialect (RFC 4180, made precise)
    Records are separated by ``\\n``; a ``\\r`` just before it is dropped (CRLF input). A record
    may span lines inside a quoted field: ``"`` toggles quoting and ``""`` inside quotes is an
    escaped quote, so a newline ends a record exactly when the count of ``"`` since the record
    started is even. Blank lines (empty, or a lone ``\\r``) outside quotes are not records: they
    are skipped, never counted, never rejected (they keep their physical line numbers, so line
    numbers in reasons match what an editor shows). A ``\\r`` anywhere else is data. (A stray
    ``"`` inside an unquoted field still counts for record boundaries, which must be found
    without parsing fields.) A file that is binary (NUL bytes) or not UTF-8 is refused.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from ..errors import InputError

__all__ = ["MAX_RECORD_BYTES", "ChunkRange", "SplitChunk", "check_text", "find_chunks", "split_csv"]


BOM = b"\xef\xbb\xbf"


# A single record longer than this is refused: it is what an unterminated quote or a file
# without line breaks looks like, and the splitter would otherwise hold it all in memory.
MAX_RECORD_BYTES = 64 << 20
# The stdlib csv module refuses fields over 128 KiB by default; every reader of mrbatch's CSV
# (quoted records, rejected rows shown by `mrbatch errors`, verify's recount) takes what the
# pipeline takes. Process-wide, set once here, where every such reader imports from.
csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_BYTES))


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
    quote: bytes | None = b'"',
    has_header: bool = True,
) -> Iterator[SplitChunk]:
    """Yield chunks of about ``chunk_rows`` physical lines each, never splitting a record.

    A chunk holds exactly ``chunk_rows`` lines unless its last record continues on further lines
    (a quoted newline) or the file ends, so chunk boundaries depend only on the bytes and
    ``chunk_rows``, never on ``block_size``. Concatenating the chunk bodies gives back the file
    after the header byte for byte. A header-only file yields one chunk without records. The
    leading UTF-8 BOM is dropped. Raises InputError for an empty or binary file, invalid UTF-8,
    a quoted field still open at the end of the file and a line or quoted record longer than
    ``max_record_bytes`` (so memory stays bounded by a chunk plus a block even then).

    ``quote`` is the dialect's quote character (None: no quoting, a line break always ends a
    record, as in JSON Lines); without ``has_header`` there is no header line (JSON Lines):
    chunks then start at line 1 and their ``header_size`` is 0.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    r = _Reader(stream, max(1, block_size))
    while len(r.buf) < 3 and r.more():
        pass
    if r.buf.startswith(BOM):
        r.take(3)
    # A binary file may have no line break at all: say so before looking for the header's end.
    _check_nul(r.buf, 0, len(r.buf), r.base, 1, source)
    q = quote or b"\0"  # NUL never occurs in text (it is refused): nothing is ever quoted
    header, line = b"", 1
    if has_header:
        header_end, header_lines = _cut_after(
            r, 0, 1, source, line=1, limit=max_record_bytes, quote=q
        )
        if not r.buf[:header_end].strip():
            _raise_blank_header(r, header_end, source)
        check_text(r.buf, 0, header_end, r.base, 1, source)
        header = r.take(header_end)
        line = 1 + header_lines
    index = 0
    while r.buf or r.more():
        end, lines = _cut_after(
            r, 0, chunk_rows, source, line=line, limit=max_record_bytes, quote=q
        )
        check_text(r.buf, 0, end, r.base, line, source)
        yield SplitChunk(index, r.take(end, prefix=header), line, lines, len(header))
        index += 1
        line += lines
    if index == 0:
        yield SplitChunk(0, header, line, 0, len(header))


# (index, start, end, sha256 of the bytes start:end, first_line, lines): one chunk's record
# range in the file, as SPLIT records it (model.records.ChunkSpec).
ChunkRange = tuple[int, int, int, str, int, int]


def find_chunks(
    stream: BinaryIO,
    *,
    chunk_rows: int,
    source: str,
    quote: bytes | None = b'"',
    has_header: bool = True,
    check_header: Callable[[bytes], None] | None = None,
) -> tuple[str, list[ChunkRange]]:
    """The header and the chunks of the whole ``stream`` (read to its end), each with the
    SHA-256 of its records: what a split task finds, and what an upload finds while it stores
    the bytes (both call this, so they agree). ``check_header`` sees the header line first."""
    header = b""
    found: list[tuple[int, int, str, int, int]] = []
    counted = _Counted(stream)
    for chunk in split_csv(
        cast("BinaryIO", counted),
        chunk_rows=chunk_rows,
        source=source,
        quote=quote,
        has_header=has_header,
    ):
        if chunk.index == 0:
            header = chunk.data[: chunk.header_size]
            if check_header is not None and has_header:
                check_header(header)
        body = memoryview(chunk.data)[chunk.header_size :]
        sha = hashlib.sha256(body).hexdigest()
        found.append((chunk.index, len(body), sha, chunk.first_line, chunk.lines))
    # The bodies are consecutive and run to the end of the file; the header (and a BOM, if
    # any) come before them.
    offset = counted.size - sum(length for _, length, _, _, _ in found)
    ranges: list[ChunkRange] = []
    for index, length, sha, first_line, lines in found:
        ranges.append((index, offset, offset + length, sha, first_line, lines))
        offset += length
    return header.decode("utf-8"), ranges


class _Counted:
    """A stream that counts the bytes read from it (split_csv reads to the end)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        block = self.stream.read(n)
        self.size += len(block)
        return block


def _cut_after(
    r: _Reader, start: int, want: int, source: str, *, line: int, limit: int, quote: bytes = b'"'
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
    # Extend while inside a quoted field: parity of '"' since the (unquoted) start. (find is
    # memchr, several times faster than count: most chunks hold no quote at all.)
    quotes = r.buf.count(quote, start, end) if r.buf.find(quote, start, end) >= 0 else 0
    unquoted_end = end
    while quotes % 2:
        nl = r.buf.find(b"\n", end)
        while nl < 0 and len(r.buf) - unquoted_end <= limit and r.more():
            nl = r.buf.find(b"\n", end)
        if nl < 0 and end < len(r.buf) and r.eof:  # last line, without a line break
            quotes += r.buf.count(quote, end)
            counted += 1
            end = len(r.buf)
            continue
        if nl < 0 or nl - unquoted_end > limit:
            opener = r.buf.rfind(quote, start, end)
            at = line + r.buf.count(b"\n", start, opener)
            still = "never closed (unterminated quote at end of file)"
            if not r.eof or nl >= 0:
                still = f"still open {_size(limit)} later (unterminated quote?)"
            raise InputError(
                f"{source}: line {at}: a quoted field opened here is {still}",
                hint='close the quote, or double a quote that belongs to the value ("")',
            )
        quotes += r.buf.count(quote, end, nl + 1)
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
        # the smaller side is counted (the other follows from ``total``)
        left = mid - lo <= hi - mid
        c = buf.count(b"\n", lo, mid) if left else total - buf.count(b"\n", mid, hi)
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


def check_text(
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
