"""Byte plumbing of the S3 object store: spooling a write to disk while hashing it, uploading
it (one PUT, or a multipart upload with a SHA-256 per part), copying server-side (one copy, or
part by part above the size a single copy allows) and reading a version as a seekable stream
of ranged GETs. Nothing here holds a whole object in memory: at most one part."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

from ..errors import NotFoundError
from ..ports import ObjectInfo
from .aws import guard

__all__ = ["Bucket", "Reader", "Spool", "copy_object", "describe", "encode", "latest", "upload"]

META = "mrbatch"  # the one user-metadata field holding mrbatch's description of a version

_BLOCK = 1 << 20
MAX_SINGLE_COPY = 5 * 1024**3  # CopyObject's own limit


@dataclass
class Bucket:
    """One bucket and how to move bytes in and out of it."""

    client: Any
    name: str
    where: str  # names it in messages
    threshold: int  # larger objects are uploaded in parts
    part_size: int
    spool_dir: str | None
    max_single_copy: int = MAX_SINGLE_COPY  # larger copies go part by part


def encode(info: ObjectInfo) -> dict[str, str]:
    """The user metadata describing ``info`` (ASCII JSON: S3 metadata travels in headers)."""
    fields: dict[str, Any] = {
        "sha256": info.sha256,
        "epoch": info.epoch,
        "origin": info.origin,
        "modified": repr(info.modified),
        "meta": dict(info.meta),
    }
    if info.deleted:
        fields["deleted"] = True
    return {META: json.dumps(fields, separators=(",", ":"), ensure_ascii=True)}


def describe(
    key: str, head: Mapping[str, Any], region: str, digest: Callable[[], str]
) -> ObjectInfo:
    """The ObjectInfo of a HEAD (or GET) answer; an object some other tool wrote has no
    description: its SHA-256 comes from ``digest`` (reading it), its clock from S3."""
    raw = head.get("Metadata", {}).get(META)
    if raw is None:
        info = ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            sha256=digest(),
            version="",
            modified=head["LastModified"].timestamp(),
            origin=region,
        )
    else:
        fields = json.loads(raw)
        info = ObjectInfo(
            key=key,
            size=0 if fields.get("deleted") else int(head["ContentLength"]),
            sha256=fields["sha256"],
            version="",
            modified=float(fields["modified"]),
            origin=fields["origin"],
            epoch=int(fields["epoch"]),
            deleted=bool(fields.get("deleted")),
            meta=fields.get("meta", {}),
        )
    return replace(info, version=info.sha256)  # a version is named by its bytes


def latest(b: Bucket, prefix: str, skip: str) -> list[tuple[str, str | None]]:
    """(key, VersionId) of the latest version of every key under ``prefix``, in key order,
    from versioned listings. Listing everything starts with the top-level prefixes, so
    nothing under ``skip`` (mrbatch's own change feed) is listed."""
    found: list[tuple[str, str | None]] = []
    prefixes = [prefix]
    if not prefix:
        prefixes = []
        pages = b.client.get_paginator("list_objects_v2").paginate(Bucket=b.name, Delimiter="/")
        for top in pages:  # a page holds 1,000 keys and prefixes at most
            prefixes += [p["Prefix"] for p in top.get("CommonPrefixes", []) if p["Prefix"] != skip]
            found += [(o["Key"], None) for o in top.get("Contents", [])]
    for under in prefixes:
        pages = b.client.get_paginator("list_object_versions").paginate(Bucket=b.name, Prefix=under)
        for page in pages:
            for entry in page.get("Versions", []):
                if entry["IsLatest"] and not entry["Key"].startswith(skip):
                    found.append((entry["Key"], entry["VersionId"]))
    return sorted(found)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class Spool:
    """``data`` written to an anonymous temporary file, with its SHA-256 and size."""

    def __init__(self, data: bytes | BinaryIO | Iterable[bytes], directory: str | None = None):
        # Anonymous: the kernel frees it when closed, even after a crash.
        self.file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by __exit__
        digest = hashlib.sha256()
        self.size = 0
        try:
            for block in _blocks(data):
                digest.update(block)
                self.file.write(block)
                self.size += len(block)
        except BaseException:
            self.file.close()
            raise
        self.sha256 = digest.hexdigest()
        self.sha256_b64 = _b64(digest.digest())

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _blocks(data: bytes | BinaryIO | Iterable[bytes]) -> Iterable[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif hasattr(data, "read"):
        while block := data.read(_BLOCK):
            yield block
    else:
        yield from data


def upload(
    b: Bucket, key: str, spool: Spool, metadata: Mapping[str, str], conditions: Mapping[str, str]
) -> dict[str, Any]:
    """Upload the spooled bytes to ``key``; returns the response (VersionId, ETag). ``conditions``
    are IfMatch / IfNoneMatch, checked by S3 when the object becomes visible."""
    client, bucket, part_size = b.client, b.name, b.part_size
    spool.file.seek(0)
    if spool.size <= b.threshold:
        response: dict[str, Any] = client.put_object(
            Bucket=bucket,
            Key=key,
            Body=spool.file,
            ContentLength=spool.size,
            ChecksumSHA256=spool.sha256_b64,
            Metadata=dict(metadata),
            **conditions,
        )
        return response

    def send(upload_id: str) -> Iterator[dict[str, Any]]:
        number = 0
        while block := spool.file.read(part_size):
            number += 1
            checksum = _b64(hashlib.sha256(block).digest())
            answer = client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=block,
                ChecksumSHA256=checksum,
            )
            yield {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
            del block

    create = {"Metadata": dict(metadata), "ChecksumAlgorithm": "SHA256"}
    return _in_parts(b, key, create, conditions, send)


def copy_object(
    b: Bucket,
    key: str,
    source: Mapping[str, str],
    size: int,
    metadata: Mapping[str, str],
    conditions: Mapping[str, str],
) -> dict[str, Any]:
    """Server-side copy of ``source`` ({Bucket, Key, VersionId}) to ``key`` with new metadata:
    no byte crosses to this process."""
    client, bucket, part_size = b.client, b.name, b.part_size
    if size <= b.max_single_copy:
        response: dict[str, Any] = client.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource=dict(source),
            MetadataDirective="REPLACE",
            Metadata=dict(metadata),
            **conditions,
        )
        return {**response, **response.get("CopyObjectResult", {})}

    def send(upload_id: str) -> Iterator[dict[str, Any]]:
        for number, start in enumerate(range(0, size, part_size), start=1):
            end = min(start + part_size, size) - 1
            answer = client.upload_part_copy(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=dict(source),
                CopySourceRange=f"bytes={start}-{end}",
            )
            yield {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

    return _in_parts(b, key, {"Metadata": dict(metadata)}, conditions, send)


def _in_parts(
    b: Bucket,
    key: str,
    create: Mapping[str, Any],
    conditions: Mapping[str, str],
    send: Callable[[str], Iterator[dict[str, Any]]],
) -> dict[str, Any]:
    """A multipart upload of ``key``: the parts ``send(upload_id)`` sends, completed under
    ``conditions``; aborted when anything fails, so no half-written object stays."""
    upload_id = b.client.create_multipart_upload(Bucket=b.name, Key=key, **create)["UploadId"]
    try:
        parts = list(send(upload_id))
        done: dict[str, Any] = b.client.complete_multipart_upload(
            Bucket=b.name,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **conditions,
        )
        return done
    except BaseException:
        b.client.abort_multipart_upload(Bucket=b.name, Key=key, UploadId=upload_id)
        raise


class Reader(io.RawIOBase):
    """One object version as a seekable binary stream: a GET opened lazily at the current
    position (a ranged GET after a seek), so a presence check that only opens costs nothing
    more and a seek never reads the bytes it skips. When the VersionId is gone (purged: it was
    found in a cache), ``relocate`` names the version holding the same bytes now, once."""

    def __init__(
        self,
        b: Bucket,
        key: str,
        version_id: str,
        size: int,
        relocate: Callable[[], str] | None = None,
    ) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._where = b.client, b.name, key, b.where
        self._version_id, self._size = version_id, size
        self._relocate = relocate
        self._pos = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        target = max(0, base + offset)
        if target != self._pos:
            self._drop()
            self._pos = target
        return self._pos

    def _drop(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size or len(buffer) == 0:
            return 0
        if self._body is None:
            try:
                self._body = self._get()
            except NotFoundError:
                if self._relocate is None:
                    raise
                self._version_id, self._relocate = self._relocate(), None
                self._body = self._get()
        with guard(self._where, f"object {self._key!r}"):
            data = self._body.read(len(buffer))
        if not data:
            raise OSError(f"{self._key}: the stream ended at {self._pos} of {self._size} bytes")
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _get(self) -> Any:
        with guard(self._where, f"object {self._key!r}"):
            return self._client.get_object(
                Bucket=self._bucket,
                Key=self._key,
                VersionId=self._version_id,
                Range=f"bytes={self._pos}-",
            )["Body"]

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while block := super().read(_BLOCK):
                chunks.append(block)
            return b"".join(chunks)
        return super().read(size) or b""

    def close(self) -> None:
        self._drop()
        super().close()
