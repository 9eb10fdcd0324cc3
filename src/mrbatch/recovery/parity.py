"""Standby parity: does every region run with the same schema, reference data and configuration?
A standby that took over with another schema or an older reference version would produce other
results than the region it replaced. Each region's process reports the hashes of its loaded
configuration and schema in its heartbeat; the reference version is read from each bucket."""

from __future__ import annotations

import time
from typing import Any

from .. import backends
from ..config.fingerprint import fingerprint
from ..config.workspace import Workspace
from ..errors import MrbatchError

__all__ = ["PARITY_FACTS", "parity"]

PARITY_FACTS = ("config", "schema", "reference")


def parity(ws: Workspace) -> dict[str, Any]:
    """Per region the three hashes, and every difference between regions (or between a running
    process and the files on disk, which a restart would load). ``ok`` is False on any
    difference; a region that cannot be asked is listed in ``unknown``, not as a difference."""
    now = time.time()
    on_disk = fingerprint(ws)
    try:
        beats = backends.open_control_plane(ws).heartbeats()
    except MrbatchError:
        beats = {}
    enrichment = ws.config.pipeline.enrichment
    regions: dict[str, dict[str, Any]] = {}
    for region in ws.regions:
        beat = beats.get(region)
        alive = beat is not None and now - beat.at <= ws.config.watch.heartbeat_timeout
        info = beat.info if beat is not None and alive else {}
        entry: dict[str, Any] = {
            "config": info.get("config_sha256"),
            "schema": info.get("schema_sha256"),
            "reference": None,
            "process_alive": alive,
        }
        if enrichment is not None:
            try:
                head = backends.open_object_store(ws, region).head(enrichment.reference)
                entry["reference"] = head.sha256 if head is not None else "missing"
            except MrbatchError as exc:
                entry["reference_error"] = str(exc)
        regions[region] = entry
    differences = []
    for fact in PARITY_FACTS:
        values = {region: entry[fact] for region, entry in regions.items()}
        known = {v for v in values.values() if v is not None}
        disk = on_disk.get(f"{fact}_sha256")
        if len(known) > 1:
            differences.append({"what": fact, "values": values, "on_disk": disk})
        elif known and disk is not None and disk not in known:
            differences.append(
                {
                    "what": fact,
                    "values": values,
                    "on_disk": disk,
                    "note": "the processes run with another one than the file on disk",
                }
            )
    unknown = sorted(
        region for region, entry in regions.items() if any(entry[f] is None for f in PARITY_FACTS)
    )
    if enrichment is None:
        unknown = sorted(r for r, e in regions.items() if e["config"] is None)
    return {
        "ok": not differences,
        "at": now,
        "regions": regions,
        "differences": differences,
        "unknown": unknown,
        "on_disk": {"config": on_disk["config_sha256"], "schema": on_disk["schema_sha256"]},
    }
