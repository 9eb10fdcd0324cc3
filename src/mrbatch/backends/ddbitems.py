"""Items of the DynamoDB state table: attribute values, a record's item and its body.

A record's body is stored inline up to 64 KB, compressed (zlib) up to 300 KB compressed, and
above that cut into parts of 300 KB (``r#<pk>``, ``z#<write id>#<n>``) written in the same
transaction as the record, so no item outgrows DynamoDB's 400 KB (a transaction carries at
most 4 MB: up to 11 parts). A tombstone (a deleted record) is the record's item with ``x`` set
and an empty body.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..ports import Record

__all__ = [
    "INLINE",
    "MAX_PARTS",
    "PART",
    "TOMBSTONES",
    "Retry",
    "Stored",
    "bookkeeping",
    "decode",
    "encode",
    "n",
    "removal",
    "s",
    "seq",
]

INLINE, PART, MAX_PARTS = 64 * 1024, 300 * 1024, 11
TOMBSTONES = "t#"  # the partition listing deleted records (pk -> clock), for purge


def seq(position: int) -> str:
    """A feed position as a sort key (20 digits: they sort as numbers)."""
    return f"{position:020d}"


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: float | int) -> dict[str, str]:
    return {"N": str(Decimal(repr(value)) if isinstance(value, float) else value)}


@dataclass(frozen=True)
class Stored:
    """A record as stored, with what its next write must know."""

    record: Record
    feed: tuple[str, int] | None  # (region, seq) of its feed item
    parts: tuple[str, int] | None  # (write id, count) of its body parts


class Retry(Exception):
    """A body's parts were replaced while being read: read the record again."""


def _part_key(pk: str, write_id: str, index: int) -> dict[str, Any]:
    return {"p": s(f"r#{pk}"), "s": s(f"z#{write_id}#{index:03d}")}


def encode(
    record: Record, before: Stored | None, table: str, region: str
) -> tuple[dict[str, Any], list[Any]]:
    """The record's item (without its feed position) and the transaction's writes of its body
    parts, with the removal of the previous write's parts."""
    item: dict[str, Any] = {
        "p": s(f"r#{record.pk}"),
        "s": s("r"),
        "k": s(record.kind),
        "v": n(record.version),
        "e": n(record.epoch),
        "w": s(record.writer),
        "u": n(record.updated),
        "qr": s(region),
    }
    if record.deleted:
        item["x"] = {"BOOL": True}
    encoded = json.dumps(dict(record.body), sort_keys=True, separators=(",", ":")).encode()
    extra: list[dict[str, Any]] = []
    packed = zlib.compress(encoded, 6) if len(encoded) > INLINE else b""
    if len(encoded) <= INLINE:
        item["b"] = s(encoded.decode())
    elif len(packed) <= PART:
        item["z"] = {"B": packed}
    else:
        pieces = [packed[i : i + PART] for i in range(0, len(packed), PART)]
        if len(pieces) > MAX_PARTS:
            raise ValueError(
                f"record {record.pk}: body of {len(encoded)} bytes is too large"
                f" ({len(packed)} compressed; at most {MAX_PARTS * PART})"
            )
        write_id = uuid.uuid4().hex
        item["zi"], item["zn"] = s(write_id), n(len(pieces))
        for index, piece in enumerate(pieces):
            part = {**_part_key(record.pk, write_id, index), "d": {"B": piece}}
            extra.append({"Put": {"TableName": table, "Item": part}})
    if before is not None and before.parts is not None:
        write_id, count = before.parts
        for index in range(count):
            key = _part_key(record.pk, write_id, index)
            extra.append({"Delete": {"TableName": table, "Key": key}})
    return item, extra


def decode(item: Mapping[str, Any], read_parts: Callable[[str, str, int], bytes]) -> Stored:
    """The record an item holds; ``read_parts(pk, write id, count)`` reads a body kept in
    parts (raising Retry when they were replaced meanwhile)."""
    pk = item["p"]["S"][2:]
    parts = None
    if "b" in item:
        body = json.loads(item["b"]["S"])
    elif "z" in item:
        body = json.loads(zlib.decompress(item["z"]["B"]))
    else:
        parts = (item["zi"]["S"], int(item["zn"]["N"]))
        body = json.loads(zlib.decompress(read_parts(pk, *parts)))
    feed = (item["qr"]["S"], int(item["q"]["N"])) if "q" in item else None
    record = Record(
        pk=pk,
        kind=item["k"]["S"],
        body=body,
        version=int(item["v"]["N"]),
        epoch=int(item["e"]["N"]),
        writer=item["w"]["S"],
        updated=float(item["u"]["N"]),
        seq=feed[1] if feed else 0,
        deleted=bool(item.get("x", {}).get("BOOL", False)),
    )
    return Stored(record, feed, parts)


def bookkeeping(record: Record, before: Stored | None, table: str) -> list[Any]:
    """The writes that keep the other items in step with a write of ``record`` over
    ``before``: its kind index item while it is live, its tombstone item while it is deleted,
    the removal of its previous feed item."""
    writes: list[dict[str, Any]] = []
    live_before = before is not None and not before.record.deleted
    kind_changed = before is not None and before.record.kind != record.kind
    if not record.deleted and (not live_before or kind_changed):
        index = {"p": s(f"k#{record.kind}"), "s": s(record.pk)}
        writes.append({"Put": {"TableName": table, "Item": index}})
    if before is not None and live_before and (record.deleted or kind_changed):
        old = {"p": s(f"k#{before.record.kind}"), "s": s(record.pk)}
        writes.append({"Delete": {"TableName": table, "Key": old}})
    tombstone = {"p": s(TOMBSTONES), "s": s(record.pk)}
    if record.deleted:
        writes.append({"Put": {"TableName": table, "Item": {**tombstone, "u": n(record.updated)}}})
    elif before is not None and before.record.deleted:
        writes.append({"Delete": {"TableName": table, "Key": tombstone}})
    if before is not None and before.feed is not None:
        old_feed = {"p": s(f"f#{before.feed[0]}"), "s": s(seq(before.feed[1]))}
        writes.append({"Delete": {"TableName": table, "Key": old_feed}})
    return writes


def removal(stored: Stored, condition: str, values: dict[str, Any], table: str) -> list[Any]:
    """The writes that forget a tombstone: its item (under ``condition``: still as read), its
    tombstone item and its feed item."""
    pk = stored.record.pk
    writes: list[dict[str, Any]] = [
        {
            "Delete": {
                "TableName": table,
                "Key": {"p": s(f"r#{pk}"), "s": s("r")},
                "ConditionExpression": condition,
                "ExpressionAttributeValues": values,
            }
        },
        {"Delete": {"TableName": table, "Key": {"p": s(TOMBSTONES), "s": s(pk)}}},
    ]
    if stored.feed is not None:
        feed = {"p": s(f"f#{stored.feed[0]}"), "s": s(seq(stored.feed[1]))}
        writes.append({"Delete": {"TableName": table, "Key": feed}})
    return writes
