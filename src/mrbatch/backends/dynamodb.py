"""The DynamoDB state table: one table per region, items keyed by ``p`` (partition) and ``s``.

| item | p | s | holds |
|---|---|---|---|
| record | ``r#<pk>`` | ``r`` | kind, version, epoch, writer, clock, feed position, body |
| body part | ``r#<pk>`` | ``z#<write id>#<n>`` | a slice of a compressed body too large |
| kind index | ``k#<kind>`` | ``<pk>`` | nothing: ``scan`` queries it in pk order, then reads |
| tombstones | ``t#`` | ``<pk>`` | the clock of a deleted record: what ``purge`` reads |
| feed | ``f#<region>`` | ``<seq, 20 digits>`` | the pk written at that position |
| feed's end | ``n#<region>`` | ``end`` | the last position given out |
| cursor | ``c#<region>`` | ``<name>`` | a replica's position; never in the feed |

Every write of a record is one transaction: the record under its condition
(``attribute_not_exists`` to claim; to compare-and-set, the version and epoch it was read at,
checked against ``expected_version`` and the epoch rule; the merge rule to apply a replica),
the feed item at the next position, the feed's end moved to it under the condition that it is
still the position before (so positions are given out once, in order, and a position appears
only after every one before it: a reader that has passed n never finds one below n later —
even though a record's previous feed item is removed in the same transaction, leaving a hole
that a writer guessing the end from a position it saw long ago would otherwise fill), the
removal of the record's previous feed item (a record is in the feed once, at its latest
position), the kind index item while the record is live, the tombstone item while it is
deleted, and the body's parts (:mod:`mrbatch.backends.ddbitems`). Feed, end and cursor items
are named by region, so the per-region bookkeeping stays apart when the tables are replicas of
one global table (``replication = "native"``).

DynamoDB acknowledges a write once it is durable (in several zones): ``durable=True`` adds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bx

from ..config.aws import AwsTarget
from ..errors import ConflictError, NotFoundError, UnavailableError
from ..ports import Record
from ..retry import Backoff
from .aws import client, code, create_table, guard
from .ddbitems import TOMBSTONES, Retry, Stored, bookkeeping, decode, encode, n, removal, s, seq

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["DynamoStateTable", "open_table", "provision"]

_ATTEMPTS = 200


class DynamoStateTable:
    def __init__(self, target: AwsTarget, region: str) -> None:
        self.region = region
        self.table = target.name
        self._db = client("dynamodb", target)
        self._where = f"{region}: table {self.table}"
        self._feed_p = f"f#{region}"
        self._end_key = {"p": s(f"n#{region}"), "s": s("end")}
        self._tail: int | None = None  # the feed's end as last seen (None: not read yet)
        self._end_exists = True  # False: a table written before the end item existed

    # ------------------------------------------------------------------ reading
    def _item(self, pk: str) -> dict[str, Any] | None:
        with guard(self._where, f"record {pk}"):
            answer = self._db.get_item(
                TableName=self.table, Key={"p": s(f"r#{pk}"), "s": s("r")}, ConsistentRead=True
            )
        item: dict[str, Any] | None = answer.get("Item")
        return item

    def _decode(self, item: Mapping[str, Any]) -> Stored:
        return decode(item, self._parts)

    def _parts(self, pk: str, write_id: str, count: int) -> bytes:
        with guard(self._where, f"record {pk}"):
            answer = self._db.query(
                TableName=self.table,
                KeyConditionExpression="p = :p AND begins_with(s, :z)",
                ExpressionAttributeValues={":p": s(f"r#{pk}"), ":z": s(f"z#{write_id}#")},
                ConsistentRead=True,
            )
        items = answer.get("Items", [])
        if len(items) != count:
            raise Retry  # replaced while being read
        return b"".join(i["d"]["B"] for i in sorted(items, key=lambda i: i["s"]["S"]))

    def _stored(self, pk: str) -> Stored | None:
        """The record as stored, a tombstone included."""
        for _ in range(_ATTEMPTS):
            item = self._item(pk)
            if item is None:
                return None
            try:
                return self._decode(item)
            except Retry:
                continue
        raise UnavailableError(f"{self._where}: record {pk} kept changing while being read")

    def _batch(self, pks: list[str]) -> dict[str, dict[str, Any]]:
        """The record items of ``pks`` (missing ones left out), read consistently."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(pks), 100):
            keys = [{"p": s(f"r#{pk}"), "s": s("r")} for pk in pks[start : start + 100]]
            request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                with guard(self._where, "records"):
                    answer = self._db.batch_get_item(RequestItems=request)
                for item in answer.get("Responses", {}).get(self.table, []):
                    found[item["p"]["S"][2:]] = item
                request = answer.get("UnprocessedKeys") or {}
        return found

    def _end(self) -> int:
        """Read the feed's end (the last position given out) and remember it."""
        with guard(self._where, "the change feed"):
            answer = self._db.get_item(TableName=self.table, Key=self._end_key, ConsistentRead=True)
            if "Item" in answer:
                self._tail, self._end_exists = int(answer["Item"]["n"]["N"]), True
                return self._tail
            # A table from before the end item: its feed's last item is the end.
            answer = self._db.query(
                TableName=self.table,
                KeyConditionExpression="p = :p",
                ExpressionAttributeValues={":p": s(self._feed_p)},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            )
        items = answer.get("Items", [])
        self._tail, self._end_exists = (int(items[0]["s"]["S"]) if items else 0), False
        return self._tail

    # ------------------------------------------------------------------ writing
    def _write(
        self, record: Record, before: Stored | None, condition: str, values: dict[str, Any]
    ) -> Record:
        """One transaction: the record under ``condition``, its feed item at the next position
        and the feed's end moved there, its old feed item and body parts removed, its kind
        index item kept while it is live and its tombstone item while it is deleted."""
        item, extra = encode(record, before, self.table, self.region)
        extra += bookkeeping(record, before, self.table)
        # After the end as this process last saw it, and after the record's own position in
        # this region's feed: the claim must differ from the old feed item the transaction
        # removes (one item, one operation), even when another process moved the end on since.
        feed = before.feed if before is not None else None
        own = feed[1] if feed is not None and feed[0] == self.region else 0
        position = max(self._end() if self._tail is None else self._tail, own) + 1
        put: dict[str, Any] = {"TableName": self.table, "Item": item}
        put["ConditionExpression"] = condition
        put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        if values:
            put["ExpressionAttributeValues"] = values
        claim: dict[str, Any] = {"TableName": self.table}
        claim["ConditionExpression"] = "attribute_not_exists(p)"
        for attempt in range(_ATTEMPTS):
            item["q"] = n(position)
            claim["Item"] = {"p": s(self._feed_p), "s": s(seq(position)), "pk": s(record.pk)}
            end: dict[str, Any] = {"TableName": self.table}
            end["Item"] = {**self._end_key, "n": n(position)}
            if self._end_exists:
                end["ConditionExpression"] = "n = :prev"
                end["ExpressionAttributeValues"] = {":prev": n(position - 1)}
            else:
                end["ConditionExpression"] = "attribute_not_exists(p)"
            try:
                with guard(self._where, f"record {record.pk}"):
                    items = [{"Put": put}, {"Put": claim}, {"Put": end}, *extra]
                    self._db.transact_write_items(TransactItems=items)
            except bx.ClientError as exc:
                reasons = exc.response.get("CancellationReasons") or []
                if code(exc) != "TransactionCanceledException" or not reasons:
                    raise
                if reasons[0].get("Code") == "ConditionalCheckFailed":
                    raise _Refused from exc
                if "ConditionalCheckFailed" in (reasons[1].get("Code"), reasons[2].get("Code")):
                    position = max(self._end(), own) + 1  # the end moved on: the next one
                else:  # a concurrent transaction on one of the items: back off, try again
                    time.sleep(Backoff(base=0.005, cap=0.5).delay(attempt + 1))
                continue
            self._tail, self._end_exists = position, True
            return replace(record, body=dict(record.body), seq=position)
        raise UnavailableError(f"{self._where}: the change feed is too contended")

    # ------------------------------------------------------------------ the port
    def get(self, pk: str) -> Record | None:
        stored = self._stored(pk)
        return None if stored is None or stored.record.deleted else stored.record

    def insert(
        self, pk: str, kind: str, body: Mapping[str, Any], *, epoch: int, durable: bool = False
    ) -> Record:
        # durable: every acknowledged DynamoDB write is durable already (see the module doc).
        stored: Stored | None = None  # assumed absent: the claim costs no read
        for _ in range(_ATTEMPTS):
            if stored is not None and not stored.record.deleted:
                raise ConflictError(f"{self.region}: record {pk} exists already")
            # Over a deletion the version goes on growing: replicas order by it too.
            version = 1 if stored is None else stored.record.version + 1
            record = Record(pk, kind, dict(body), version, epoch, self.region, time.time())
            claim: tuple[str, dict[str, Any]] = ("attribute_not_exists(p)", {})
            try:
                return self._write(
                    record, stored, *(claim if stored is None else self._unchanged(stored))
                )
            except _Refused:
                stored = self._stored(pk)  # there (or a tombstone): decide on what is stored
        raise UnavailableError(f"{self._where}: record {pk} kept changing under an insert")

    def update(
        self, pk: str, body: Mapping[str, Any], *, expected_version: int, epoch: int
    ) -> Record:
        for _ in range(_ATTEMPTS):
            stored = self._stored(pk)
            if stored is None or stored.record.deleted:
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

    def delete(self, pk: str, *, epoch: int) -> bool:
        for _ in range(_ATTEMPTS):
            stored = self._stored(pk)
            if stored is None or stored.record.deleted:
                return False
            current = stored.record
            tombstone = Record(
                pk,
                current.kind,
                {},
                current.version + 1,
                max(epoch, current.epoch),  # a deletion never loses to what it deletes
                self.region,
                time.time(),
                deleted=True,
            )
            try:
                self._write(tombstone, stored, *self._unchanged(stored))
                return True
            except _Refused:
                continue
        raise UnavailableError(f"{self._where}: record {pk} kept changing under a delete")

    def purge(self, older_than: float) -> int:
        """Tombstones written before ``older_than`` leave the table with their feed items,
        except the one holding the feed's newest position (as on every backend; the feed's
        end item would keep that position from being given out again anyway)."""
        end = self._end()
        purged = 0
        pages = self._db.get_paginator("query").paginate(
            TableName=self.table,
            KeyConditionExpression="p = :p",
            FilterExpression="u < :cut",
            ExpressionAttributeValues={":p": s(TOMBSTONES), ":cut": n(older_than)},
            ConsistentRead=True,
        )
        with guard(self._where, "tombstones"):
            candidates = [i["s"]["S"] for page in pages for i in page.get("Items", [])]
        for pk in candidates:
            stored = self._stored(pk)
            if stored is None or not stored.record.deleted or stored.record.updated >= older_than:
                continue  # written again meanwhile
            if stored.feed == (self.region, end):
                continue
            gone = removal(stored, *self._unchanged(stored), self.table)
            try:
                with guard(self._where, f"record {pk}"):
                    self._db.transact_write_items(TransactItems=gone)
            except bx.ClientError as exc:
                if code(exc) != "TransactionCanceledException":
                    raise
                continue  # written or purged meanwhile: the next purge looks again
            purged += 1
        return purged

    @staticmethod
    def _unchanged(stored: Stored) -> tuple[str, dict[str, Any]]:
        """The condition that the record is still exactly as ``stored`` (version, epoch,
        clock and writer, and feed position: the items the write replaces)."""
        rec = stored.record
        values = {":v": n(rec.version), ":e": n(rec.epoch), ":u": n(rec.updated)}
        values[":w"] = s(rec.writer)
        condition = "v = :v AND e = :e AND u = :u AND w = :w"
        if stored.feed is not None:
            condition += " AND q = :q AND qr = :qr"
            values[":q"], values[":qr"] = n(stored.feed[1]), s(stored.feed[0])
        return condition, values

    def scan(self, kind: str, *, prefix: str = "") -> Iterator[Record]:
        return iter(list(self._scan(kind, prefix)))

    def _scan(self, kind: str, prefix: str) -> Iterator[Record]:
        condition, values = "p = :p", {":p": s(f"k#{kind}")}
        if prefix:
            condition += " AND begins_with(s, :s)"
            values[":s"] = s(prefix)
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
                        record = None if stored is None else stored.record
                        if record is not None and record.kind == kind and not record.deleted:
                            yield record

    def _decoded(self, pk: str, item: Mapping[str, Any]) -> Stored | None:
        try:
            return self._decode(item)
        except Retry:
            return self._stored(pk)

    def changes(self, after: int, *, limit: int = 1000) -> list[Record]:
        found: list[Record] = []
        start: dict[str, Any] | None = None
        while len(found) < limit:
            args: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": "p = :p AND s > :after",
                "ExpressionAttributeValues": {
                    ":p": s(self._feed_p),
                    ":after": s(seq(after)),
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
            for position, pk in entries:
                if self._tail is not None:
                    self._tail = max(self._tail, position)
                stored = self._decoded(pk, items[pk]) if pk in items else None
                # A record is fed once, at its latest position: an entry it has moved on from
                # (written again since this page was read) is skipped; it comes again later.
                if stored is not None and stored.feed == (self.region, position):
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
                if record.rank <= stored.record.rank:
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
        key = {"p": s(f"c#{self.region}"), "s": s(name)}
        with guard(self._where, f"cursor {name}"):
            item = self._db.get_item(TableName=self.table, Key=key, ConsistentRead=True)
        return int(item["Item"]["val"]["N"]) if "Item" in item else 0

    def set_cursor(self, name: str, value: int) -> None:
        item = {"p": s(f"c#{self.region}"), "s": s(name), "val": n(int(value))}
        with guard(self._where, f"cursor {name}"):
            self._db.put_item(TableName=self.table, Item=item)

    def last_seq(self) -> int:
        return self._end()

    def sync(self) -> None:
        """Nothing to do: DynamoDB acknowledges a write once it is durable."""


class _Refused(Exception):
    """The record's condition failed (it exists, or changed since it was read)."""


def open_table(ws: Workspace, region: str) -> DynamoStateTable:
    return DynamoStateTable(ws.config.dynamodb.for_region(region), region)


def provision(ws: Workspace, region: str) -> str:
    """Create the region's table when it is missing (on-demand capacity); says what it did."""
    return create_table(ws.config.dynamodb.for_region(region), region)
