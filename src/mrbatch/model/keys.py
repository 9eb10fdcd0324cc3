"""Object keys: what a valid key is, and how an input key maps to its outputs and run objects.

Contract: an upload ``input/<path>`` publishes ``output/<path>`` and ``rejected/<path>``; a run's
intermediates live under ``runs/<run-id>/``.

Every accepted version of an input (key + content hash, named by its run id) also has keys of
its own under ``versions/<run-id>/``: ``input/<path>`` (the accepted bytes, written once when the
upload is acknowledged), ``output/<path>`` and ``rejected/<path>`` (that version's results).
They never change once written, so replication can never drop one in favour of another
version of the same key, and every version's result stays reachable after a newer one replaced
``output/<path>``.
"""

from __future__ import annotations

import hashlib
import unicodedata

from ..errors import UsageError

__all__ = [
    "INPUT",
    "OUTPUT",
    "REJECTED",
    "RUNS",
    "VERSIONS",
    "check_input_key",
    "check_key",
    "chunk_output_key",
    "chunk_rejected_key",
    "is_chunk_intermediate",
    "output_key_for",
    "rejected_key_for",
    "run_id_for",
    "run_key",
    "version_input_key",
    "version_output_key",
    "version_rejected_key",
]

INPUT, OUTPUT, REJECTED, RUNS = "input/", "output/", "rejected/", "runs/"
VERSIONS = "versions/"
MAX_KEY = 1024
_RUN_ID_LENGTH = 20
# versions/<run-id>/output/<path> must fit in MAX_KEY too.
MAX_INPUT_KEY = MAX_KEY - len(VERSIONS) - _RUN_ID_LENGTH - 1 - (len(REJECTED) - len(INPUT))


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise UsageError saying why.

    Refused: empty keys or segments, ``.``/``..`` segments, absolute paths, backslashes, and
    control characters (which would let a key escape the bucket or forge log lines)."""
    problem = None
    if not key:
        problem = "is empty"
    elif len(key.encode("utf-8")) > MAX_KEY:
        problem = f"is longer than {MAX_KEY} bytes"
    elif key.startswith("/"):
        problem = "is an absolute path"
    elif "\\" in key:
        problem = "contains a backslash"
    elif any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in key):
        problem = "contains a control character"
    else:
        segments = key.split("/")
        if any(seg in ("", ".", "..") for seg in segments):
            problem = "has an empty, '.' or '..' segment"
    if problem:
        raise UsageError(
            f"object key {key!r} {problem}",
            hint="use a relative key such as input/orders.csv",
        )
    return key


def check_input_key(key: str) -> str:
    """``check_key`` for an upload under ``input/``: also short enough for its version keys."""
    check_key(key)
    if key.startswith(INPUT) and len(key.encode("utf-8")) > MAX_INPUT_KEY:
        raise UsageError(
            f"input key {key[:60]!r}... is longer than {MAX_INPUT_KEY} bytes",
            hint="every version of an input is also kept under versions/<run-id>/; use a"
            " shorter key",
        )
    return key


def _path_of(input_key: str) -> str:
    if not input_key.startswith(INPUT):
        raise UsageError(f"{input_key!r} is not an input key (they start with {INPUT!r})")
    return input_key[len(INPUT) :]


def output_key_for(input_key: str) -> str:
    return OUTPUT + _path_of(input_key)


def rejected_key_for(input_key: str) -> str:
    return REJECTED + _path_of(input_key)


def run_id_for(input_key: str, sha256: str) -> str:
    """The run of one input version: the same key and bytes always give the same id, which is
    what makes claiming idempotent."""
    return hashlib.sha256(f"{input_key}\0{sha256}".encode()).hexdigest()[:_RUN_ID_LENGTH]


def version_input_key(run_id: str, input_key: str) -> str:
    """Where the accepted bytes of one input version are kept (immutable)."""
    return f"{VERSIONS}{run_id}/{INPUT}{_path_of(input_key)}"


def version_output_key(run_id: str, input_key: str) -> str:
    """That version's own output, whatever ``output/<path>`` shows later."""
    return f"{VERSIONS}{run_id}/{OUTPUT}{_path_of(input_key)}"


def version_rejected_key(run_id: str, input_key: str) -> str:
    return f"{VERSIONS}{run_id}/{REJECTED}{_path_of(input_key)}"


def run_key(run_id: str, name: str) -> str:
    return f"{RUNS}{run_id}/{name}"


def chunk_output_key(run_id: str, index: int) -> str:
    return run_key(run_id, f"out/{index:05d}.csv")


def chunk_rejected_key(run_id: str, index: int) -> str:
    return run_key(run_id, f"rejected/{index:05d}.csv")


def is_chunk_intermediate(key: str) -> bool:
    """A chunk task's output or rejected rows (``runs/<run-id>/out/…``, ``…/rejected/…``):
    what only the region running the chunk needs. The built-in replicators copy their
    deletions, not their bytes (see runtime.replication)."""
    if not key.startswith(RUNS):
        return False
    _run_id, _, rest = key[len(RUNS) :].partition("/")
    return rest.startswith(("out/", "rejected/"))
