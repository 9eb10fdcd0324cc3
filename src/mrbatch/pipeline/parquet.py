"""Parquet inputs split by row groups, without reading the whole file and without pyarrow.

A Parquet file ends with its footer (``<FileMetaData> <length:u32 LE> PAR1``), the Thrift
compact encoding of the file's schema and of every row group's column chunks (where each
starts, how many bytes it takes, how many rows the group holds). :func:`read_footer` decodes
just what splitting needs from those bytes; a chunk is then a range of consecutive row groups,
whose column chunks form one contiguous byte span of the file.

Byte ranges of a Parquet file are not files themselves, so a chunk task reads its span and the
footer (two ranged reads of the object store; S3 serves them as ranged GETs) into a sparse
temporary file at their own offsets and lets polars read the chunk's rows: with the row range
given as a slice, polars reads only the row groups that hold them (checked by the tests, which
zero every other byte). Values become text: polars' cast to String, datetimes as ISO 8601 with
a ``T``; nested columns (lists, structs) are refused by name.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

import polars as pl

from ..errors import InputError

__all__ = ["ParquetFooter", "RowGroup", "group_row_groups", "read_footer", "read_row_groups"]

MAGIC = b"PAR1"
# Footer bigger than this is not a plausible Parquet file (and would not fit a chunk anyway).
_MAX_FOOTER = 64 << 20


@dataclass(frozen=True)
class RowGroup:
    index: int
    rows: int
    start: int  # first byte of its first column chunk
    end: int  # one past the last byte of its last column chunk


@dataclass(frozen=True)
class ParquetFooter:
    rows: int
    columns: list[str]
    groups: list[RowGroup]
    footer_start: int  # offset of the FileMetaData (the footer runs to the end of the file)


class _Compact:
    """A reader of the Thrift compact protocol: every struct becomes {field id: value}."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int) -> Any:
        if kind in (1, 2):  # booleans inside a list / map
            return self.byte() == 1
        if kind == 3:
            return struct.unpack("b", bytes([self.byte()]))[0]
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind == 7:
            value = struct.unpack_from("<d", self.data, self.pos)[0]
            self.pos += 8
            return value
        if kind == 8:
            size = self.varint()
            raw = self.data[self.pos : self.pos + size]
            self.pos += size
            return raw
        if kind in (9, 10):
            header = self.byte()
            size, item = header >> 4, header & 0x0F
            if size == 15:
                size = self.varint()
            return [self.value(item) for _ in range(size)]
        if kind == 11:
            size = self.varint()
            if not size:
                return {}
            kinds = self.byte()
            return {self.value(kinds >> 4): self.value(kinds & 0x0F) for _ in range(size)}
        if kind == 12:
            return self.struct()
        raise ValueError(f"unknown Thrift compact type {kind}")

    def struct(self) -> dict[int, Any]:
        fields: dict[int, Any] = {}
        last = 0
        while True:
            header = self.byte()
            if header == 0:
                return fields
            delta, kind = header >> 4, header & 0x0F
            last = last + delta if delta else self.zigzag()
            if kind in (1, 2):  # a boolean field carries its value in the type
                fields[last] = kind == 1
            else:
                fields[last] = self.value(kind)


def read_footer(tail: bytes, size: int, source: str) -> ParquetFooter:
    """Decode the footer from ``tail``, the last bytes of a file of ``size`` bytes (at least the
    whole footer; see :func:`footer_length`)."""
    if size < 12 or tail[-4:] != MAGIC:
        raise InputError(
            f"{source} is not a Parquet file (it does not end with PAR1)",
            hint="upload a Parquet file, or declare the pipeline's format",
        )
    length = struct.unpack("<I", tail[-8:-4])[0]
    if length + 8 > len(tail) or length + 12 > size:
        raise InputError(f"{source}: the Parquet footer is cut short")
    meta = tail[-8 - length : -8]
    try:
        doc = _Compact(meta).struct()
        schema = doc[2]
        groups_doc = doc.get(4, [])
        rows = int(doc[3])
    except (IndexError, KeyError, ValueError, struct.error) as exc:
        raise InputError(f"{source}: the Parquet footer cannot be read: {exc}") from exc
    columns = _columns(schema, source)
    groups: list[RowGroup] = []
    for index, group in enumerate(groups_doc):
        starts, ends = [], []
        for column in group.get(1, []):
            cmeta = column.get(3, {})
            first = cmeta.get(11) or cmeta.get(9)
            if first is None:
                raise InputError(f"{source}: row group {index} has a column without data")
            start = min(first, cmeta.get(9, first))
            starts.append(start)
            ends.append(start + int(cmeta.get(7, 0)))
        if not starts:
            raise InputError(f"{source}: row group {index} has no columns")
        groups.append(RowGroup(index, int(group.get(3, 0)), min(starts), max(ends)))
    return ParquetFooter(rows, columns, groups, size - 8 - length)


def footer_length(last8: bytes, source: str) -> int:
    """How many bytes at the end of the file hold the footer, from its last 8 bytes."""
    if len(last8) < 8 or last8[-4:] != MAGIC:
        raise InputError(
            f"{source} is not a Parquet file (it does not end with PAR1)",
            hint="upload a Parquet file, or declare the pipeline's format",
        )
    length = struct.unpack("<I", last8[:4])[0]
    if length > _MAX_FOOTER:
        raise InputError(f"{source}: the Parquet footer claims {length} bytes")
    return length + 8


def _columns(schema: list[dict[int, Any]], source: str) -> list[str]:
    """Top-level column names; nested columns are refused (mrbatch reads flat records)."""
    if not schema:
        raise InputError(f"{source}: the Parquet schema is empty")
    names: list[str] = []
    for element in schema[1:]:
        name = bytes(element.get(4, b"")).decode("utf-8", "replace")
        if element.get(5):  # num_children: a group (struct, list, map)
            raise InputError(
                f"{source}: column {name!r} is nested (a list, struct or map);"
                " mrbatch reads flat columns",
                hint="flatten the column before exporting",
            )
        names.append(name)
    return names


def group_row_groups(groups: list[RowGroup], chunk_rows: int) -> list[list[RowGroup]]:
    """Consecutive row groups gathered into chunks of at least ``chunk_rows`` rows (the last
    may hold fewer); a file without row groups gives one empty chunk."""
    chunks: list[list[RowGroup]] = []
    current: list[RowGroup] = []
    rows = 0
    for group in groups:
        current.append(group)
        rows += group.rows
        if rows >= chunk_rows:
            chunks.append(current)
            current, rows = [], 0
    if current or not chunks:
        chunks.append(current)
    return chunks


def read_row_groups(
    span: bytes, span_start: int, footer: bytes, size: int, first_row: int, rows: int, source: str
) -> pl.DataFrame:
    """Rows ``first_row`` (0-based) .. ``first_row + rows`` of a Parquet file of ``size`` bytes,
    given only the bytes of the row groups holding them (``span`` at offset ``span_start``) and
    the footer (the file's last ``len(footer)`` bytes); every column as text."""
    fd, path = tempfile.mkstemp(prefix="mrbatch-rowgroups-", suffix=".parquet")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(MAGIC)
            out.seek(span_start)
            out.write(span)
            out.seek(size - len(footer))
            out.write(footer)
        try:
            frame = pl.scan_parquet(path, use_statistics=False).slice(first_row, rows).collect()
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InputError(f"{source}: the Parquet data cannot be read: {exc}") from exc
    finally:
        os.unlink(path)
    return as_text(frame, source)


def as_text(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Every column as text: polars' String cast, datetimes as ISO 8601 with a ``T``."""
    cast: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        column = pl.col(name)
        if dtype == pl.String:
            cast.append(column)
        elif isinstance(dtype, pl.Datetime):
            cast.append(column.dt.to_string("%Y-%m-%dT%H:%M:%S%.f").alias(name))
        elif dtype.is_nested():
            raise InputError(f"{source}: column {name!r} is nested; mrbatch reads flat columns")
        else:
            cast.append(column.cast(pl.String).alias(name))
    return frame.select(cast)
