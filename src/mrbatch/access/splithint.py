"""The split found while an upload is stored: a hint the region may use instead of a split task.

Storing an upload reads every byte once (to hash and write it) on one core; finding the chunks
(``csvsplit.find_chunks``) is a second pass over the same bytes, which a split task made after
the acknowledgement, in the region's critical path (0.2 s a million rows, 8% of a file's time).
A :class:`Splitter` takes the blocks the store reads, as the store reads them, on a thread of
the uploading process (the second core is idle during an upload), and finds the chunks with the
settings the input's pipeline has when the upload starts. Its result goes into the version's
``Accepted`` record; the region claiming the run uses it when the run's settings are the same
(chunk rows, format, quote character, size) and runs a split task otherwise.

A hint is only ever a shortcut: the chunk tasks verify every chunk's checksum against the bytes
they read, chunk 0's task checks the header against the pipeline (a split task did), and a
hint that is missing, late or wrong in shape (any error here) means a split task, as before.
It is made for inputs of at most :data:`HINT_MAX_CHUNKS` chunks (the record stays small). From
:data:`HINT_FROM_BYTES` (or of a size not known in advance) the chunks are found on a thread as
the bytes go by; a smaller upload keeps its bytes and finds them once stored, on the uploading
thread (well under a millisecond for a 1,000-row file, where a split task was a round trip
through a worker process: with many small files it was a third of the workers' tasks).
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from ..config.pipelines import format_for, split_quote
from ..config.settings import Config
from ..model.keys import INPUT
from ..pipeline.csvsplit import find_chunks

__all__ = ["HINT_FROM_BYTES", "HINT_MAX_CHUNKS", "SplitHint", "Splitter"]

log = logging.getLogger("mrbatch.accesspoint")

HINT_FROM_BYTES = 4 << 20
HINT_MAX_CHUNKS = 1_000
_QUEUED_BLOCKS = 32  # at the store's 1 MiB reads: what the splitter may lag behind the write
_END = b""


@dataclass(frozen=True)
class SplitHint:
    """Chunks found for ``size`` bytes with these settings: ``chunks`` are (index, start,
    end, sha256, first_line, lines), as model.records.ChunkSpec holds them."""

    chunk_rows: int
    input_format: str
    quote: str | None
    size: int
    header: str
    chunks: list[list[Any]]

    def to_body(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_body(cls, body: object) -> SplitHint | None:
        """The hint in a record body, None when absent or not of this shape."""
        if not isinstance(body, dict):
            return None
        try:
            return cls(**body)
        except TypeError:
            return None


class _Blocks:
    """The splitter's side of the queue: a stream of the blocks the store has read."""

    def __init__(self, blocks: queue.Queue[bytes]) -> None:
        self._blocks = blocks
        self.ended = False  # the end was read: nothing more will come

    def read(self, _n: int = -1) -> bytes:
        if self.ended:
            return _END
        block = self._blocks.get()
        self.ended = block is _END
        return block


class Splitter:
    """Finds the chunks of an upload on a thread while the store reads it (see the module)."""

    def __init__(
        self,
        chunk_rows: int,
        input_format: str,
        quote: str | None,
        key: str,
        *,
        inline: bool = False,
    ) -> None:
        self.settings = (chunk_rows, input_format, quote)
        self.inline = inline
        self._key = key
        self._blocks: queue.Queue[bytes] = queue.Queue(_QUEUED_BLOCKS)
        self._kept: list[bytes] | None = [] if inline else None  # inline: the bytes, kept
        self._result: SplitHint | None = None
        self._failed = False
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(
                target=self._run, args=(_Blocks(self._blocks),), name="split-hint", daemon=True
            )
            self._thread.start()

    @classmethod
    def for_upload(cls, config: Config, key: str, data: object) -> Splitter | None:
        """A splitter for an upload of ``data`` to ``key``, or None when no hint is made: not
        an input, bytes that do not come as bytes or a stream (an iterable of blocks), a
        pipeline that reads Parquet. Below HINT_FROM_BYTES it finds the chunks inline."""
        if not key.startswith(INPUT) or not (
            isinstance(data, bytes | bytearray) or hasattr(data, "read")
        ):
            return None
        spec = config.spec_for_key(key)
        input_format = format_for(spec, key)
        if input_format not in ("csv", "jsonl"):
            return None
        inline = _size_of(data) < HINT_FROM_BYTES
        quote = split_quote(spec, input_format)
        return cls(spec.chunk_rows, input_format, quote, key, inline=inline)

    def _run(self, blocks: _Blocks | io.BytesIO) -> None:
        chunk_rows, input_format, quote = self.settings
        key = self._key
        try:
            header, ranges = find_chunks(
                blocks,  # type: ignore[arg-type]
                chunk_rows=chunk_rows,
                source=key,
                quote=quote.encode() if quote else None,
                has_header=input_format == "csv",
            )
            if len(ranges) <= HINT_MAX_CHUNKS:
                chunks = [list(r) for r in ranges]
                size = ranges[-1][2]  # the last chunk ends with the file (there is always one)
                self._result = SplitHint(chunk_rows, input_format, quote, size, header, chunks)
        except Exception as exc:  # a bad file: the split task will say what is wrong
            log.debug("no split hint for %s: %s", key, exc)
            self._failed = True
            while blocks.read():  # to the end: the upload goes on without us
                pass

    def feed(self, block: bytes) -> None:
        if not block or self._failed:
            return
        if self._kept is not None:
            self._kept.append(block)
        else:
            self._blocks.put(block)

    def finish(self, size: int) -> SplitHint | None:
        """The hint, once the store has read everything (``size`` bytes); None when there is
        none or it was made from other bytes than the store took."""
        if self._kept is not None:
            if not self._failed:
                self._run(io.BytesIO(b"".join(self._kept)))
            self._kept = []
        else:
            self._blocks.put(_END)
            assert self._thread is not None
            self._thread.join()
        hint = self._result
        if hint is None or self._failed or hint.size != size:
            return None
        return hint

    def abandon(self) -> None:
        """The upload failed: end the thread, no hint."""
        self._failed = True
        self._kept = None if self._kept is None else []
        if self._thread is not None:
            self._blocks.put(_END)
            self._thread.join()

    def reading(self, data: object) -> BinaryIO:
        """``data`` (bytes or a binary stream) as a stream whose every read also feeds this
        splitter."""
        stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        return cast("BinaryIO", _Tee(cast("BinaryIO", stream), self))


class _Tee:
    def __init__(self, stream: BinaryIO, splitter: Splitter) -> None:
        self._stream = stream
        self._splitter = splitter

    def read(self, n: int = -1) -> bytes:
        block = self._stream.read(n)
        self._splitter.feed(block)
        return block


def _size_of(data: object) -> int:
    """The size of an upload when known without reading it (bytes, or a stream that can seek);
    HINT_FROM_BYTES when unknown (a pipe: it may be large)."""
    if isinstance(data, bytes | bytearray):
        return len(data)
    try:
        if not data.seekable():  # type: ignore[attr-defined]
            return HINT_FROM_BYTES
        here = int(data.tell())  # type: ignore[attr-defined]
        end = int(data.seek(0, os.SEEK_END))  # type: ignore[attr-defined]
        data.seek(here)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return HINT_FROM_BYTES
    return end - here
