"""What a process runs with, as hashes it can report and others compare (standby parity): the
configuration as loaded (its meaning, not its comments or layout) and the pipeline's schema
file."""

from __future__ import annotations

import hashlib
import json

from .workspace import Workspace

__all__ = ["fingerprint"]


def fingerprint(ws: Workspace) -> dict[str, str | None]:
    """``config_sha256`` (the loaded configuration, canonical JSON) and ``schema_sha256`` (the
    bytes of the schema file, None when it cannot be read)."""
    config = json.dumps(ws.config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    path = (ws.root / ws.config.pipeline.schema_path).resolve()
    try:
        schema: str | None = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        schema = None
    return {"config_sha256": hashlib.sha256(config.encode()).hexdigest(), "schema_sha256": schema}
