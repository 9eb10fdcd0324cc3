"""The DynamoDB state table: one table per region, items keyed by ``p`` (partition) and ``s``.

| item | p | s | holds |
|---|---|---|---|
| record | ``r#<pk>`` | ``r`` | kind, version, epoch, writer, clock, feed position, body |
| body part | ``r#<pk>`` | ``z#<write id>#<n>`` | a slice of a compressed body too large |
| kind index | ``k#<kind>`` | ``<pk>`` | nothing: ``scan`` queries it in pk order, then reads |
| feed | ``f#<region>`` | ``<seq, 20 digits>`` | the pk written at that position |
| cursor | ``c#<region>`` | ``<name>`` | a replica's position; never in the feed |

Every write of a record is one transaction: the record under its condition
(``attribute_not_exists`` to claim; to compare-and-set, the version and epoch it was read at,
checked against ``expected_version`` and the epoch rule; the merge rule to apply a replica),
the feed item at the next position under ``attribute_not_exists`` (a writer takes
n + 1 only after n exists, so the feed is gap-free and appears in order), the removal of the
record's previous feed item (a record is in the feed once, at its latest position), the kind
index item when the record is new, and the body's parts. No item can outgrow DynamoDB's 400 KB:
a body above 64 KB is compressed, and above 300 KB compressed it is cut into parts of 300 KB
written in the same transaction (up to 3.3 MB compressed, under the 4 MB a transaction takes).
Feed and cursor items are named by region, so the per-region bookkeeping stays apart when the
tables are replicas of one global table (``replication = "native"``).
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bx

from ..config.aws import AwsTarget
from ..errors import ConflictError, NotFoundError, UnavailableError
from ..ports import Record
from .aws import client, code, create_table, guard

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["DynamoStateTable", "open_table", "provision"]

INLINE, PART, MAX_PARTS = 64 * 1024, 300 * 1024, 11
_ATTEMPTS = 200


def _seq_key(seq: int) -> str:
    return f"{seq:020d}"


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float | int) -> dict[str, str]:
    return {"N": str(Decimal(repr(value)) if isinstance(value, float) else value)}


@dataclass(frozen=True)
class _Stored:
    """A record as stored, with what its next write must know."""

    record: Record
    feed: tuple[str, int] | None  # (region, seq) of its feed item
    parts: tuple[str, int] | None  # (write id, count) of its body parts


class _Retry(Exception):
    """A body's parts were replaced while being read: read the record again."""


class DynamoStateTable:
    def __init__(self, target: AwsTarget, region: str) -> None:
        self.region = region
        self.table = target.name
        self._db = client("dynamodb", target)
        self._where = f"{region}: table {self.table}"
        self._tail = 0
        self._feed_p = f"f#{region}"

    # ------------------------------------------------------------------ reading
    def _item(self, pk: str) -> dict[str, Any] | None:
        with guard(self._where, f"record {pk}"):
            answer = self._db.get_item(
                TableName=self.table, Key={"p": _s(f"r#{pk}"), "s": _s("r")}, ConsistentRead=True
            )
        item: dict[str, Any] | None = answer.get("Item")
        return item

    def _decode(self, item: Mapping[str, Any]) -> _Stored:
        pk = item["p"]["S"][2:]
        parts = None
        if "b" in item:
            body = json.loads(item["b"]["S"])
        elif "z" in item:
            body = json.loads(zlib.decompress(item["z"]["B"]))
        else:
            parts = (item["zi"]["S"], int(item["zn"]["N"]))
            body = json.loads(zlib.decompress(self._parts(pk, *parts)))
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
        )
        return _Stored(record, feed, parts)

    def _parts(self, pk: str, write_id: str, count: int) -> bytes:
        with guard(self._where, f"record {pk}"):
            answer = self._db.query(
                TableName=self.table,
                KeyConditionExpression="p = :p AND begins_with(s, :z)",
                ExpressionAttributeValues={":p": _s(f"r#{pk}"), ":z": _s(f"z#{write_id}#")},
                ConsistentRead=True,
            )
        items = answer.get("Items", [])
        if len(items) != count:
            raise _Retry  # replaced while being read
        return b"".join(i["d"]["B"] for i in sorted(items, key=lambda i: i["s"]["S"]))

    def _stored(self, pk: str) -> _Stored | None:
        for _ in range(_ATTEMPTS):
            item = self._item(pk)
            if item is None:
                return None
            try:
                return self._decode(item)
            except _Retry:
                continue
        raise UnavailableError(f"{self._where}: record {pk} kept changing while being read")

    def _batch(self, pks: list[str]) -> dict[str, dict[str, Any]]:
        """The record items of ``pks`` (missing ones left out), read consistently."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(pks), 100):
            keys = [{"p": _s(f"r#{pk}"), "s": _s("r")} for pk in pks[start : start + 100]]
            request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                with guard(self._where, "records"):
                    answer = self._db.batch_get_item(RequestItems=request)
                for item in answer.get("Responses", {}).get(self.table, []):
                    found[item["p"]["S"][2:]] = item
                request = answer.get("UnprocessedKeys") or {}
        return found

    # ------------------------------------------------------------------ writing
    def _write(
        self, record: Record, before: _Stored | None, condition: str, values: dict[str, Any]
    ) -> Record:
        """One transaction: the record under ``condition``, its feed item at the next position,
        its old feed item and body parts removed, its kind index created when new."""
        item: dict[str, Any] = {
            "p": _s(f"r#{record.pk}"),
            "s": _s("r"),
            "k": _s(record.kind),
            "v": _n(record.version),
            "e": _n(record.epoch),
            "w": _s(record.writer),
            "u": _n(record.updated),
            "qr": _s(self.region),
        }
        extra = self._body(record, before, item)
        if before is None or before.record.kind != record.kind:
            index = {"p": _s(f"k#{record.kind}"), "s": _s(record.pk)}
            extra.append({"Put": {"TableName": self.table, "Item": index}})
            if before is not None:
                old = {"p": _s(f"k#{before.record.kind}"), "s": _s(record.pk)}
                extra.append({"Delete": {"TableName": self.table, "Key": old}})
        if before is not None and before.feed is not None:
            old_feed = {"p": _s(f"f#{before.feed[0]}"), "s": _s(_seq_key(before.feed[1]))}
            extra.append({"Delete": {"TableName": self.table, "Key": old_feed}})
        # After every position this process knows of, and after the record's own (a
        # transaction cannot both remove and create one item).
        seq = max(self._tail, before.record.seq if before is not None else 0) + 1
        put: dict[str, Any] = {"TableName": self.table, "Item": item}
        put["ConditionExpression"] = condition
        put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        if values:
            put["ExpressionAttributeValues"] = values
        claim: dict[str, Any] = {"TableName": self.table}
        claim["ConditionExpression"] = "attribute_not_exists(p)"
        for attempt in range(_ATTEMPTS):
            item["q"] = _n(seq)
            claim["Item"] = {"p": _s(self._feed_p), "s": _s(_seq_key(seq)), "pk": _s(record.pk)}
            try:
                with guard(self._where, f"record {record.pk}"):
                    items = [{"Put": put}, {"Put": claim}, *extra]
                    self._db.transact_write_items(TransactItems=items)
            except bx.ClientError as exc:
                reasons = exc.response.get("CancellationReasons") or []
                if code(exc) != "TransactionCanceledException" or not reasons:
                    raise
                if reasons[0].get("Code") == "ConditionalCheckFailed":
                    raise _Refused from exc
                if reasons[1].get("Code") == "ConditionalCheckFailed":
                    seq = self.last_seq() + 1  # the position was taken: the end moved on
                else:  # a concurrent transaction on one of the items: back off, try again
                    time.sleep(min(0.5, 0.005 * 2 ** min(attempt, 7)))
                continue
            self._tail = max(self._tail, seq)
            return replace(record, body=dict(record.body), seq=seq)
        raise UnavailableError(f"{self._where}: the change feed is too contended")

    def _body(self, record: Record, before: _Stored | None, item: dict[str, Any]) -> list[Any]:
        """Put the body in ``item`` (inline, compressed, or as parts); returns the writes of
        the parts and the removal of the previous version's parts."""
        encoded = json.dumps(dict(record.body), sort_keys=True, separators=(",", ":")).encode()
        extra: list[dict[str, Any]] = []
        packed = zlib.compress(encoded, 6) if len(encoded) > INLINE else b""
        if len(encoded) <= INLINE:
            item["b"] = _s(encoded.decode())
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
            item["zi"], item["zn"] = _s(write_id), _n(len(pieces))
            for n, piece in enumerate(pieces):
                key = {"p": _s(f"r#{record.pk}"), "s": _s(f"z#{write_id}#{n:03d}")}
                extra.append({"Put": {"TableName": self.table, "Item": {**key, "d": {"B": piece}}}})
        if before is not None and before.parts is not None:
            write_id, count = before.parts
            for n in range(count):
                key = {"p": _s(f"r#{record.pk}"), "s": _s(f"z#{write_id}#{n:03d}")}
                extra.append({"Delete": {"TableName": self.table, "Key": key}})
        return extra

    # ------------------------------------------------------------------ the port
    def get(self, pk: str) -> Record | None:
        return None if (stored := self._stored(pk)) is None else stored.record

    def insert(self, pk: str, kind: str, body: Mapping[str, Any], *, epoch: int) -> Record:
        record = Record(pk, kind, dict(body), 1, epoch, self.region, time.time())
        try:
            return self._write(record, None, "attribute_not_exists(p)", {})
        except _Refused:
            raise ConflictError(f"{self.region}: record {pk} exists already") from None

    def update(
        self, pk: str, body: Mapping[str, Any], *, expected_version: int, epoch: int
    ) -> Record:
        for _ in range(_ATTEMPTS):
            stored = self._stored(pk)
            if stored is None:
                raise NotFoundError(f"{self.region}: no record {pk}")
            current = stored.record
            if current.version != expected_version:
                raise ConflictError(
                    f"{self.region}: record {pk} is at version {current.version},"
                    f" not {expected_version}"
                )
            if epoch < current.epoch:
                # Higher epoch wins: a writer from an older epoch never overrides a newer one.
                raise ConflictError(
                    f"{self.region}: record {pk} was written in epoch {current.epoch};"
                    f" a write from epoch {epoch} is stale"
                )
            record = Record(
                pk, current.kind, dict(body), expected_version + 1, epoch, self.region, time.time()
            )
            try:
                return self._write(record, stored, *self._unchanged(stored))
            except _Refused:
                continue  # changed since it was read: read it again and decide
        raise UnavailableError(f"{self._where}: record {pk} kept changing under an update")

    @staticmethod
    def _unchanged(stored: _Stored) -> tuple[str, dict[str, Any]]:
        """The condition that the record is still exactly as ``stored`` (version, epoch,
        clock and writer, and feed position: the items the write replaces)."""
        rec = stored.record
        values = {":v": _n(rec.version), ":e": _n(rec.epoch), ":u": _n(rec.updated)}
        values[":w"] = _s(rec.writer)
        condition = "v = :v AND e = :e AND u = :u AND w = :w"
        if stored.feed is not None:
            condition += " AND q = :q AND qr = :qr"
            values[":q"], values[":qr"] = _n(stored.feed[1]), _s(stored.feed[0])
        return condition, values

    def scan(self, kind: str, *, prefix: str = "") -> Iterator[Record]:
        return iter(list(self._scan(kind, prefix)))

    def _scan(self, kind: str, prefix: str) -> Iterator[Record]:
        condition, values = "p = :p", {":p": _s(f"k#{kind}")}
        if prefix:
            condition += " AND begins_with(s, :s)"
            values[":s"] = _s(prefix)
        pages = self._db.get_paginator("query").paginate(
            TableName=self.table,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            ConsistentRead=True,
        )
        with guard(self._where, f"records of kind {kind}"):
            for page in pages:
                pks = [i["s"]["S"] for i in page.get("Items", [])]
                items = self._batch(pks)
                for pk in pks:
                    if pk in items:
                        stored = self._decoded(pk, items[pk])
                        if stored is not None and stored.record.kind == kind:
                            yield stored.record

    def _decoded(self, pk: str, item: Mapping[str, Any]) -> _Stored | None:
        try:
            return self._decode(item)
        except _Retry:
            return self._stored(pk)

    def changes(self, after: int, *, limit: int = 1000) -> list[Record]:
        found: list[Record] = []
        start: dict[str, Any] | None = None
        while len(found) < limit:
            args: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": "p = :p AND s > :after",
                "ExpressionAttributeValues": {
                    ":p": _s(self._feed_p),
                    ":after": _s(_seq_key(after)),
                },
                "ConsistentRead": True,
                "Limit": min(1000, max(limit - len(found), 1) * 2),
            }
            if start:
                args["ExclusiveStartKey"] = start
            with guard(self._where, "the change feed"):
                answer = self._db.query(**args)
            entries = [(int(i["s"]["S"]), i["pk"]["S"]) for i in answer.get("Items", [])]
            items = self._batch(sorted({pk for _, pk in entries}))
            for seq, pk in entries:
                self._tail = max(self._tail, seq)
                stored = self._decoded(pk, items[pk]) if pk in items else None
                # A record is fed once, at its latest position: an entry it has moved on from
                # (written again since this page was read) is skipped; it comes again later.
                if stored is not None and stored.feed == (self.region, seq):
                    found.append(stored.record)
                    if len(found) >= limit:
                        break
            start = answer.get("LastEvaluatedKey")
            if not start:
                break
        return found

    def apply_replica(self, record: Record) -> bool:
        for _ in range(_ATTEMPTS):
            stored = self._stored(record.pk)
            if stored is not None:
                mine = stored.record
                if (record.epoch, record.updated, record.writer) <= (
                    mine.epoch,
                    mine.updated,
                    mine.writer,
                ):
                    return False
                condition, values = self._unchanged(stored)
            else:
                condition, values = "attribute_not_exists(p)", {}
            try:
                self._write(record, stored, condition, values)
                return True
            except _Refused:
                continue  # another writer came first: compare again
        raise UnavailableError(f"{self._where}: record {record.pk} kept changing under a replica")

    def get_cursor(self, name: str) -> int:
        key = {"p": _s(f"c#{self.region}"), "s": _s(name)}
        with guard(self._where, f"cursor {name}"):
            item = self._db.get_item(TableName=self.table, Key=key, ConsistentRead=True)
        return int(item["Item"]["val"]["N"]) if "Item" in item else 0

    def set_cursor(self, name: str, value: int) -> None:
        item = {"p": _s(f"c#{self.region}"), "s": _s(name), "val": _n(int(value))}
        with guard(self._where, f"cursor {name}"):
            self._db.put_item(TableName=self.table, Item=item)

    def last_seq(self) -> int:
        with guard(self._where, "the change feed"):
            answer = self._db.query(
                TableName=self.table,
                KeyConditionExpression="p = :p",
                ExpressionAttributeValues={":p": _s(self._feed_p)},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            )
        items = answer.get("Items", [])
        tail = int(items[0]["s"]["S"]) if items else 0
        self._tail = max(self._tail, tail)
        return tail


class _Refused(Exception):
    """The record's condition failed (it exists, or changed since it was read)."""


def open_table(ws: Workspace, region: str) -> DynamoStateTable:
    return DynamoStateTable(ws.config.dynamodb.for_region(region), region)


def provision(ws: Workspace, region: str) -> str:
    """Create the region's table when it is missing (on-demand capacity); says what it did."""
    return create_table(ws.config.dynamodb.for_region(region), region)
