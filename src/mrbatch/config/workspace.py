"""A workspace: the directory holding ``mrbatch.toml`` and, under its data dir, everything the
embedded default keeps on disk (one folder per region, the control plane, outbox, logs, pids).

Layout of ``<data_dir>``::

    regions/<region>/bucket/      the region's bucket (blobs + index)
    regions/<region>/state.sqlite the region's state-table replica
    regions/<region>/cache/       derived data (columnar reference copies); never replicated
    control.sqlite                the control plane (routing control, heartbeats, plan log)
    outbox/                       one .eml per completed run (no SMTP configured)
    logs/  run/                   process logs and pid files
    faults.json                   faults armed by chaos experiments
    token  signing.key            secrets, mode 0600
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import ConfigError, UsageError
from .locate import find_config
from .settings import Config, load_config

__all__ = ["MIN_SECRET_LENGTH", "PRIVATE_UMASK", "Workspace", "find_config"]

# What mrbatch writes is for its owner alone: the data directory 0700, its files 0600 (mails
# carry live links, the secrets sign them). Every mrbatch process creates files under it.
PRIVATE_UMASK = 0o077

MIN_SECRET_LENGTH = 32


@dataclass(frozen=True)
class Workspace:
    config_path: Path
    config: Config

    @classmethod
    def load(cls, config_path: Path | None = None, *, pipelines: bool = True) -> Workspace:
        """``pipelines=False``: see ``load_config`` (what the quick commands use)."""
        path = (config_path or find_config()).resolve()
        return cls(config_path=path, config=load_config(path, pipelines=pipelines))

    # ------------------------------------------------------------------ paths
    @property
    def root(self) -> Path:
        return self.config_path.parent

    @cached_property
    def data_dir(self) -> Path:
        # Resolved once: every path under it is asked for at each upload and each step of a
        # run, and resolving looks at each component on disk (0.1 ms).
        return (self.root / self.config.data_dir).resolve()

    def region_dir(self, region: str) -> Path:
        self.check_region(region)
        return self.data_dir / "regions" / region

    @property
    def control_path(self) -> Path:
        return self.data_dir / "control.sqlite"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def faults_path(self) -> Path:
        return self.data_dir / "faults.json"

    def make_private(self) -> None:
        """Make the data directory 0700 if it exists (a workspace made by an older version may
        have it 0755); what is created in it from now on follows the process umask."""
        if self.data_dir.is_dir():
            self.data_dir.chmod(0o700)

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the workspace root."""
        return (self.root / relative).resolve()

    # ------------------------------------------------------------------ regions
    @property
    def regions(self) -> list[str]:
        return list(self.config.regions)

    def check_region(self, region: str) -> str:
        if region not in self.config.regions:
            known = ", ".join(self.config.regions)
            raise UsageError(
                f"unknown region {region!r}",
                hint=f"regions of this workspace ({self.config_path}): {known}",
            )
        return region

    # ------------------------------------------------------------------ secrets
    def secret(self, name: str) -> str:
        """A workspace secret (``token``, ``signing.key``), created on first use, mode 0600.

        An existing secret that is empty or too short is refused, never used: an empty token
        would let an empty bearer in, an empty key would sign links anyone can forge."""
        path = self.data_dir / name
        try:
            value = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the secret: {exc}") from exc
        else:
            if len(value) < MIN_SECRET_LENGTH:
                raise ConfigError(
                    f"{path} holds {'no secret' if not value else 'a secret that is too short'}"
                    f" (at least {MIN_SECRET_LENGTH} characters are needed)",
                    hint=f"delete {path}; mrbatch then creates a new random one (links signed"
                    " with the old key stop working, clients need the new token)",
                )
            return value
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        # Written complete under a temporary name, then linked into place: if two processes
        # race, one link wins and the other reads the winner's value, never a half-written file.
        tmp = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(value + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            value = path.read_text(encoding="ascii").strip()
        finally:
            tmp.unlink()
        return value

    @property
    def token(self) -> str:
        return self.secret("token")

    @property
    def signing_key(self) -> bytes:
        return self.secret("signing.key").encode("ascii")

    @property
    def gateway_url(self) -> str:
        gateway = self.config.gateway
        if gateway.public_url:
            return gateway.public_url.rstrip("/")
        return f"http://{gateway.host}:{gateway.port}"
