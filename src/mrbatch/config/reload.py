"""Running processes follow edits of ``mrbatch.toml``.

Every long-running process (region, replicator, gateway, supervisor) holds a
:class:`ConfigWatcher` and polls it from its loop. The watcher looks at the files the
configuration is made of (``mrbatch.toml``, a plans file it names, the pipeline's schema) at most
once a second, by their size, mtime and inode; when one changed it hashes them and, if the
digest moved, loads the configuration again:

- a configuration that loads is applied: everything that can change live does (pipeline
  settings for the runs and redrives that start from now on, thresholds, retention, timing,
  mail, links...); what cannot (:data:`RESTART_ONLY`) keeps its running value and is named,
  in the log and in ``mrbatch status``, as "restart needed for ...";
- a configuration that does not load (a typo, a bad value) changes nothing: the process keeps
  the configuration it runs with and reports the error, with the file and the key, in its log
  and in ``mrbatch status`` until the file is fixed.

Each process reports the digest of the configuration it runs with (its heartbeat, or the
supervisor's state file); ``mrbatch status`` compares it with the file's. ``mrbatch reload``
asks for a check at once (:func:`request_reload`), instead of at the next look.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import MrbatchError
from .settings import Config
from .workspace import Workspace

__all__ = [
    "RESTART_ONLY",
    "ConfigRef",
    "ConfigWatcher",
    "fingerprint",
    "live_part",
    "reload_requested_at",
    "request_reload",
    "restart_needed",
    "sources",
]

log = logging.getLogger("mrbatch.config")

# Settings a running process cannot take over: it opened its buckets, tables and control plane,
# bound its port and sized its pool with them. A change is reported, not applied.
RESTART_ONLY = (
    "regions",
    "data_dir",
    "backends",
    "gateway.host",
    "gateway.port",
    "pipeline.workers",
    "replication.nice",
    "ingest.node",
    "s3",  # bucket names, endpoints, signing regions, profiles, part sizes
    "dynamodb",
    "services",  # the supervisor starts them with `mrbatch up`
)
DIGEST_LENGTH = 12  # hex digits shown and reported; plenty to tell two configurations apart


@dataclass(frozen=True)
class ConfigRef:
    """The configuration a region process runs with, as its executor's tasks receive it: the
    path (relative paths in it are relative to its directory), the digest naming it and the
    validated configuration itself, so a worker never reads an edit its region has not
    applied."""

    path: str
    digest: str
    config: Config = field(compare=False)

    # Every chunk task carries its configuration: it is pickled once per configuration, and
    # a worker unpickles each one it is sent once (with many small files, pickling it for
    # every task was about 5% of a region's CPU in a profile).
    def __reduce__(self) -> tuple[Any, ...]:
        return (_received, (self.path, self.digest, self._pickled))

    @cached_property
    def _pickled(self) -> bytes:
        return pickle.dumps(self.config, protocol=pickle.HIGHEST_PROTOCOL)


# A worker's configurations, by path, digest and pickled bytes: a schema edit changes the
# digest (the worker's pipelines are cached by it) and not the configuration's bytes.
_RECEIVED: dict[tuple[str, str, bytes], ConfigRef] = {}
_MAX_RECEIVED = 4  # older ones: their runs are finished or gone


def _received(path: str, digest: str, pickled: bytes) -> ConfigRef:
    key = (path, digest, pickled)
    ref = _RECEIVED.get(key)
    if ref is None:
        if len(_RECEIVED) >= _MAX_RECEIVED:
            _RECEIVED.pop(next(iter(_RECEIVED)))
        ref = _RECEIVED[key] = ConfigRef(path, digest, pickle.loads(pickled))
    return ref


def sources(ws: Workspace) -> list[Path]:
    """The files the configuration is made of: mrbatch.toml, its plans file and the schema of
    every pipeline, the default one and each declared one."""
    paths = [ws.config_path]
    if ws.config.plans.file:
        paths.append(ws.resolve(ws.config.plans.file))
    schemas = [ws.config.pipeline.schema_path]
    schemas += [declared.schema_path for declared in ws.config.pipelines.values()]
    paths += [ws.resolve(schema) for schema in dict.fromkeys(schemas)]
    return paths


def _digest(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(str(path).encode() + b"\0")
        try:
            sha.update(path.read_bytes())
        except OSError:
            sha.update(b"\0missing")
        sha.update(b"\0")
    return sha.hexdigest()[:DIGEST_LENGTH]


def fingerprint(ws: Workspace) -> str:
    """The digest of the configuration files as they are on disk now."""
    return _digest(sources(ws))


def _value(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump() if hasattr(value, "model_dump") else value


def restart_needed(running: Config, edited: Config) -> list[str]:
    """The settings of :data:`RESTART_ONLY` that differ between the two configurations."""
    return [key for key in RESTART_ONLY if _value(running, key) != _value(edited, key)]


def live_part(running: Config, edited: Config) -> Config:
    """``edited`` with every setting of :data:`RESTART_ONLY` kept as ``running`` has it."""
    return edited.model_copy(
        update={
            "regions": running.regions,
            "data_dir": running.data_dir,
            "backends": running.backends,
            "gateway": edited.gateway.model_copy(
                update={"host": running.gateway.host, "port": running.gateway.port}
            ),
            "pipeline": edited.pipeline.model_copy(update={"workers": running.pipeline.workers}),
            "replication": edited.replication.model_copy(update={"nice": running.replication.nice}),
            "ingest": edited.ingest.model_copy(update={"node": running.ingest.node}),
            "s3": running.s3,
            "dynamodb": running.dynamodb,
            "services": running.services,
        }
    )


def _request_file(ws: Workspace) -> Path:
    return ws.run_dir / "reload"


def request_reload(ws: Workspace) -> float:
    """Ask every running process to look at the configuration now (``mrbatch reload``)."""
    path = _request_file(ws)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = time.time()
    tmp = path.with_name(f".reload.{os.getpid()}")
    tmp.write_text(repr(now))
    os.replace(tmp, path)
    return now


def reload_requested_at(ws: Workspace) -> float:
    try:
        return float(_request_file(ws).read_text())
    except (OSError, ValueError):
        return 0.0


class ConfigWatcher:
    """Follows the configuration files of one process (see the module's docstring)."""

    def __init__(self, ws: Workspace, label: str, *, every: float = 1.0) -> None:
        self.label = label
        self.every = every
        self.started = ws.config  # what the process was started with (RESTART_ONLY from it)
        self.ws = ws
        self.digest = fingerprint(ws)
        self.loaded_at = time.time()
        self.error: str | None = None
        self.error_digest: str | None = None
        self.pending: list[str] = []  # RESTART_ONLY settings edited since the start
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self._request = reload_requested_at(ws)

    def _stat(self) -> tuple[Any, ...]:
        stamp: list[Any] = []
        for path in sources(self.ws):
            try:
                st = path.stat()
                stamp.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamp.append((str(path), None))
        return tuple(stamp)

    def poll(self, *, force: bool = False) -> Workspace | None:
        """The new workspace when the configuration changed and loads (apply it), else None.
        Cheap: a few ``stat`` calls at most once every ``every`` seconds."""
        now = time.monotonic()
        if not force and now - self._checked < self.every:
            return None
        self._checked = now
        requested = reload_requested_at(self.ws)
        if requested != self._request:
            self._request, force = requested, True
        stamp = self._stat()
        if stamp == self._stamp and not force:
            return None
        self._stamp = stamp
        digest = fingerprint(self.ws)
        if digest == self.digest:
            if self.error is not None:
                log.info("%s: %s is back to the configuration it runs with", self.label, self.path)
            self.error = self.error_digest = None
            return None
        try:
            loaded = Workspace.load(self.ws.config_path)
        except MrbatchError as exc:
            if digest != self.error_digest:
                log.error(
                    "%s: the edited configuration is not applied, the one it runs with is kept"
                    " (%s): %s",
                    self.label,
                    self.digest,
                    exc,
                )
            self.error, self.error_digest = str(exc), digest
            return None
        if fingerprint(loaded) != digest:
            self._stamp = ()  # written again while we read it: look again at the next poll
            return None
        pending = restart_needed(self.started, loaded.config)
        if pending and pending != self.pending:
            log.warning(
                "%s: restart needed for %s (a running process keeps the value it started"
                " with); everything else is applied",
                self.label,
                ", ".join(pending),
            )
        previous = self.digest
        self.pending = pending
        self.ws = Workspace(self.ws.config_path, live_part(self.started, loaded.config))
        self.digest, self.loaded_at = digest, time.time()
        self.error = self.error_digest = None
        log.info("%s: configuration %s applied (was %s)", self.label, digest, previous)
        return self.ws

    @property
    def path(self) -> Path:
        return self.ws.config_path

    def ref(self) -> ConfigRef:
        return ConfigRef(str(self.ws.config_path), self.digest, self.ws.config)

    def report(self) -> dict[str, Any]:
        """What the process reports about its configuration (heartbeat, status)."""
        return {
            "digest": self.digest,
            "loaded_at": self.loaded_at,
            "error": self.error,
            "restart_needed": list(self.pending),
        }
