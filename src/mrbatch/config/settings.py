"""The one typed configuration model, loaded from ``mrbatch.toml``.

Every error names the file and the dotted key (``mrbatch.toml: pipeline.chunk_rows: ...``).
Unknown keys are refused rather than ignored, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..errors import ConfigError, SchemaError
from .aws import DynamoDBConfig, S3Config
from .choices import BackendsConfig, check_backends
from .clusters import DaskConfig, EtcdConfig
from .locate import CONFIG_NAME, DEFAULT_DATA_DIR
from .parsing import read_toml, validate
from .pipelines import (
    DEFAULT_PIPELINE,
    RESERVED_COLUMN_PREFIX,
    DeclaredPipeline,
    EnrichmentConfig,
    IngestConfig,
    PipelineConfig,
    PipelineSpec,
    check_name,
    resolve_spec,
)
from .plans import PlansConfig
from .recovery import ApprovalConfig, DrillConfig, ReportsConfig, RpoConfig, TracingConfig
from .services import ServiceConfig, check_service_names
from .values import ByteSize, Duration, Section

__all__ = [
    "CONFIG_NAME",
    "RESERVED_COLUMN_PREFIX",
    "BackendsConfig",
    "Config",
    "DaskConfig",
    "EnrichmentConfig",
    "EtcdConfig",
    "FailoverConfig",
    "GatewayConfig",
    "NotifyConfig",
    "OutputConfig",
    "PipelineConfig",
    "PipelineSpec",
    "ReplicationConfig",
    "RetentionConfig",
    "SupervisorConfig",
    "TimingConfig",
    "WatchConfig",
    "load_config",
]

REGION_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class OutputConfig(Section):
    # Prefix spreadsheet formula cells (=, +, -, @, tab, CR first) with ' in the output and the
    # rejected rows. Off by default: it changes values, and mrbatch otherwise never does.
    escape_formulas: bool = False


class GatewayConfig(Section):
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8740, ge=0, le=65535)
    link_expiry: Duration = 3600.0
    # No link is signed for longer, and none whose expiry lies further ahead is honoured.
    max_link_lifetime: Duration = 7 * 86400.0
    # The URL put in mails and printed by `mrbatch url`; defaults to http://host:port.
    public_url: str | None = None
    # Host names requests may carry besides localhost, the bound host and public_url's host
    # (anything else is refused: a page elsewhere cannot reach the API by DNS rebinding).
    allowed_hosts: list[str] = Field(default_factory=list)
    # One upload may not exceed this; all uploads being spooled at once may not exceed the quota.
    max_upload_bytes: ByteSize = 10 * 2**30
    spool_quota_bytes: ByteSize = 20 * 2**30

    @model_validator(mode="after")
    def _link_lifetime(self) -> GatewayConfig:
        if self.link_expiry > self.max_link_lifetime:
            raise ValueError(
                f"gateway.link_expiry ({self.link_expiry:.0f}s) is longer than"
                f" gateway.max_link_lifetime ({self.max_link_lifetime:.0f}s)"
            )
        if self.max_upload_bytes > self.spool_quota_bytes:
            raise ValueError("gateway.max_upload_bytes is larger than gateway.spool_quota_bytes")
        return self

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value


class NotifyConfig(Section):
    sender: str = Field(default="mrbatch@localhost", alias="from")
    to: list[str] = Field(default_factory=lambda: ["batch-owners@localhost"], min_length=1)
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_timeout: Duration = 10.0
    attempts: int = Field(default=5, ge=1, le=1000)
    retry_backoff: Duration = 1.0

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _address(value)

    @field_validator("to")
    @classmethod
    def _recipients(cls, values: list[str]) -> list[str]:
        return [_address(v) for v in values]


def _address(value: str) -> str:
    # A mail address (local@domain, no spaces or line breaks that would forge headers).
    if not re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+", value):
        raise ValueError(f"{value!r} is not a mail address such as ops@example.com")
    return value


class ReplicationConfig(Section):
    interval: Duration = 0.1
    batch: int = Field(default=500, ge=1)
    # Replication is background work: on a machine shared with the chunk workers it yields
    # the CPU to them (Unix nice value of the replicator processes, 0 = same priority).
    nice: int = Field(default=10, ge=0, le=19)


class TimingConfig(Section):
    poll_interval: Duration = 0.05
    heartbeat_interval: Duration = 0.5
    # A full re-scan of input/ catches anything the incremental feed could have missed.
    rescan_interval: Duration = 30.0


class SupervisorConfig(Section):
    """Restarting a region, replicator or gateway process that died (``mrbatch up``): the pause
    before a restart doubles with each death in a row up to restart_max_backoff, and is
    restart_backoff again once the process has stayed up for stable_after."""

    restart: bool = True
    restart_backoff: Duration = 1.0
    restart_max_backoff: Duration = 30.0
    stable_after: Duration = 60.0
    poll_interval: Duration = Field(default=0.5, gt=0)

    @field_validator("restart_max_backoff")
    @classmethod
    def _cap_above_base(cls, value: float, info: ValidationInfo) -> float:
        if value < info.data.get("restart_backoff", 0.0):
            raise ValueError("shorter than restart_backoff")
        return value


class FailoverConfig(Section):
    desired_rto: Duration = 60.0
    max_wait: Duration = 60.0
    min_switch_interval: Duration = 60.0


class RetentionConfig(Section):
    """How long what a finished run leaves behind is kept (see ``mrbatch gc``)."""

    # Collect continuously, from the region loop (``mrbatch gc`` works either way).
    enabled: bool = True
    # A finished run's version objects and records, superseded object versions and deletion
    # tombstones are kept this long (and never less than gateway.max_link_lifetime, so a link
    # still valid never points at nothing).
    age: Duration = 7 * 86400.0
    # The newest N finished versions of each input key are kept whatever their age.
    versions: int = Field(default=1, ge=0)
    interval: Duration = 600.0


class WatchConfig(Section):
    # A process whose last heartbeat is older is down (watch, readiness, `mrbatch status`).
    heartbeat_timeout: Duration = 5.0
    # Replication lagging more is a problem in `mrbatch status` (exit 1).
    max_lag: Duration = 60.0
    max_error_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    interval: Duration = 1.0
    # Consecutive unhealthy checks before --auto-failover acts (one missed beat is not a failure).
    unhealthy_checks: int = Field(default=2, ge=1)
    # --auto-failover waits at the plan's approval step for a person (see [approval]).
    require_approval: bool = False
    # How often `watch` runs `plan evaluate` and the standby parity checks (0: never).
    evaluate_interval: Duration = 60.0


class Config(BaseModel):
    """The whole ``mrbatch.toml``; paths are relative to the file's directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    regions: list[str]
    data_dir: str = DEFAULT_DATA_DIR
    backends: BackendsConfig = Field(default_factory=BackendsConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    replication: ReplicationConfig = Field(default_factory=ReplicationConfig)
    timing: TimingConfig = Field(default_factory=TimingConfig)
    failover: FailoverConfig = Field(default_factory=FailoverConfig)
    plans: PlansConfig = Field(default_factory=PlansConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    s3: S3Config = Field(default_factory=S3Config)
    dynamodb: DynamoDBConfig = Field(default_factory=DynamoDBConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    etcd: EtcdConfig = Field(default_factory=EtcdConfig)
    dask: DaskConfig = Field(default_factory=DaskConfig)
    approval: ApprovalConfig = Field(default_factory=ApprovalConfig)
    rpo: RpoConfig = Field(default_factory=RpoConfig)
    reports: ReportsConfig = Field(default_factory=ReportsConfig)
    drill: DrillConfig = Field(default_factory=DrillConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    # Pipelines of the workspace's own, chosen by input prefix; [pipeline] is the default one.
    pipelines: dict[str, DeclaredPipeline] = Field(default_factory=dict)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    # Programs of the workspace's own that `mrbatch up` runs and supervises (config/services.py).
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    _specs: dict[str, tuple[tuple[object, ...], PipelineSpec]] = PrivateAttr(default_factory=dict)

    @field_validator("services")
    @classmethod
    def _service_names(cls, services: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
        return check_service_names(services)

    @field_validator("pipelines")
    @classmethod
    def _pipeline_names(cls, pipelines: dict[str, DeclaredPipeline]) -> dict[str, DeclaredPipeline]:
        prefixes: dict[str, str] = {}
        for name, declared in pipelines.items():
            check_name(name)
            if name == DEFAULT_PIPELINE:
                raise ValueError(f"{name!r} names the [pipeline] section; choose another name")
            if declared.prefix in prefixes:
                raise ValueError(
                    f"{name}: prefix {declared.prefix!r} is also {prefixes[declared.prefix]}'s"
                )
            prefixes[declared.prefix] = name
        return pipelines

    # ------------------------------------------------------------------ pipelines
    def spec(self, name: str) -> PipelineSpec:
        """The pipeline called ``name`` (``default`` is ``[pipeline]``); KeyError if none."""
        # Resolved once: a region asks at every step of every run (building the spec was 4%
        # of its loop's time with many small files). The entry keeps the sections it was
        # resolved from, so a copy of this config with other sections resolves again.
        sources = (self.pipeline, self.pipelines, self.output.escape_formulas)
        held = self._specs.get(name)
        if held is None or any(a is not b for a, b in zip(held[0], sources, strict=True)):
            spec = resolve_spec(name, *sources)
            self._specs[name] = held = (sources, spec)
        return held[1]

    def spec_for_key(self, key: str) -> PipelineSpec:
        """The pipeline an input key belongs to: the longest declared prefix it starts with,
        else the default pipeline."""
        best = max(
            (n for n, d in self.pipelines.items() if key.startswith(d.prefix)),
            key=lambda n: len(self.pipelines[n].prefix),
            default=DEFAULT_PIPELINE,
        )
        return self.spec(best)

    def spec_for_run(self, name: str, key: str) -> PipelineSpec | None:
        """The pipeline a run recorded (by its key for runs from before pipelines had names);
        None when the configuration no longer declares it."""
        if not name:
            return self.spec_for_key(key)
        try:
            return self.spec(name)
        except KeyError:
            return None

    def specs(self) -> list[PipelineSpec]:
        return [self.spec(DEFAULT_PIPELINE), *(self.spec(n) for n in self.pipelines)]

    @field_validator("regions")
    @classmethod
    def _region_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not REGION_NAME.match(name):
                raise ValueError(
                    f"{name!r} is not a region name (lowercase letters, digits and '-')"
                )
        if len(set(names)) != len(names):
            raise ValueError("a region is listed twice")
        if len(names) < 2:
            # As `mrbatch init` refuses it: with one region nothing can fail over.
            raise ValueError(
                'give at least two different regions, e.g. regions = ["us-east-1", "us-west-2"]'
            )
        return names

    @model_validator(mode="after")
    def _backends_known(self) -> Config:
        check_backends(self)
        smtp_chosen = self.backends.notifier == "smtp"
        if smtp_chosen and not self.notify.smtp_host:
            raise ValueError("backends.notifier is 'smtp' but notify.smtp_host is not set")
        if not smtp_chosen and self.notify.smtp_host:
            raise ValueError(
                f"notify.smtp_host is set but backends.notifier is {self.backends.notifier!r};"
                ' set backends.notifier = "smtp" to send mail over SMTP'
            )
        if self.watch.require_approval and self.approval.timeout <= 0:
            raise ValueError(
                "watch.require_approval needs approval.timeout above 0 (how long a failover"
                " waits for a person)"
            )
        return self


def load_config(path: Path, *, pipelines: bool = True) -> Config:
    """Read and validate ``path``; raise ConfigError naming the file and the key at fault.
    ``pipelines=False`` leaves out compiling the pipelines' schemas and row checks and
    importing their user code (polars and more), for commands that run no pipeline."""
    raw = read_toml(path)
    config = validate(Config, raw, path)
    inline = set(raw.get("plans", {})) & {"failover", "failback"}
    if config.plans.file and inline:
        raise ConfigError(
            f"{path}: plans.{sorted(inline)[0]}: defined here although plans.file names"
            f" {config.plans.file}",
            hint="keep the plans in one place: remove the inline tables or plans.file",
        )
    if config.plans.file:
        plan_path = (path.parent / config.plans.file).resolve()
        plan_raw = read_toml(plan_path)
        plans = validate(PlansConfig, {**plan_raw, "file": config.plans.file}, plan_path)
        config = config.model_copy(update={"plans": plans})
    if pipelines:
        _check_pipeline(config, path)
    return config


def _check_pipeline(config: Config, path: Path) -> None:
    """Every pipeline's schema file compiles, no enrichment output column shadows one of its
    properties, its row checks compile and its user functions import: mistakes that would
    otherwise fail every run inside a worker."""
    # polars and user code, only once the TOML itself is valid
    from ..pipeline.schema import RecordSchema
    from ..pipeline.usercode import check_spec

    for spec in config.specs():
        where = "pipeline" if spec.name == DEFAULT_PIPELINE else f"pipelines.{spec.name}"
        schema_path = (path.parent / spec.schema_path).resolve()
        try:
            schema = RecordSchema.from_file(schema_path)
        except SchemaError as exc:
            raise ConfigError(f"{path}: {where}.schema: {exc.message}", hint=exc.hint) from exc
        for section, enrichment in (("enrichment", spec.enrichment), ("api", spec.api)):
            if enrichment is None:
                continue
            clash = [n for n in enrichment.columns.values() if n in schema.properties]
            if clash:
                raise ConfigError(
                    f"{path}: {where}.{section}.columns: output column {clash[0]!r} is also a"
                    f" property of the schema {schema_path.name}",
                    hint="give the enrichment output another name",
                )
        problem = check_spec(spec, path.parent)
        if problem is not None:
            key, message = problem
            raise ConfigError(
                f"{path}: {where}.{key}: {message}",
                hint="fix the declaration; user functions are imported from the workspace"
                " and its python_path",
            )
