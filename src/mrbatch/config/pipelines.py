"""Declared pipelines: ``[pipelines.NAME]`` tables of ``mrbatch.toml``, each chosen by an input
prefix, and the legacy ``[pipeline]`` section, which is the pipeline named ``default`` for every
input no declared prefix matches.

A :class:`PipelineSpec` is one pipeline with every default filled in; the engine works from it
alone. What makes a run reproducible is pinned at claim time from it: its hash
(:func:`spec_hash`: the spec and its schema file's bytes) and the code version of the user
functions it names (:func:`code_version`, in :mod:`mrbatch.pipeline.usercode`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .values import ByteSize, Duration, Section

__all__ = [
    "DEFAULT_PIPELINE",
    "FORMATS",
    "ApiEnrichmentConfig",
    "CheckConfig",
    "DeclaredPipeline",
    "EnrichmentConfig",
    "FileChecksConfig",
    "IngestConfig",
    "PipelineConfig",
    "PipelineSpec",
    "WebhookConfig",
    "format_for",
    "spec_hash",
    "split_quote",
]

DEFAULT_PIPELINE = "default"
FORMATS = ("csv", "jsonl", "parquet")
# Column names mrbatch uses inside its own files (the reference cache's key column, say).
RESERVED_COLUMN_PREFIX = "__mrbatch"

# pipeline.reference_memory by default: a reference whose cache is estimated at up to this much
# is held by each chunk worker that uses it (mrbatch.pipeline.reference). Sized by the 300 MB
# every process must stay within: a held cache costs a worker about 1.9 times its estimate, and
# the 1M-row sample reference, estimated at 72 MiB, put the workers at 281-289 MB.
REFERENCE_MEMORY_DEFAULT = 80 * 2**20
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_EXTENSIONS = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
}  # fmt: skip


def _output_names(columns: dict[str, str]) -> dict[str, str]:
    outputs = list(columns.values())
    if "" in columns or "" in outputs:
        raise ValueError("column names must not be empty")
    doubled = sorted({name for name in outputs if outputs.count(name) > 1})
    if doubled:
        raise ValueError(f"output column {doubled[0]!r} is named twice")
    reserved = [name for name in outputs if name.startswith(RESERVED_COLUMN_PREFIX)]
    if reserved:
        raise ValueError(
            f"output column {reserved[0]!r}: names starting with"
            f" {RESERVED_COLUMN_PREFIX!r} are reserved"
        )
    return columns


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def _function_ref(value: str) -> str:
    if not _REF.match(value):
        raise ValueError(f"{value!r} is not a function reference such as 'mymodule:function'")
    return value


class EnrichmentConfig(Section):
    """Join each valid row with reference data held in the bucket."""

    reference: str = "reference/financial.csv"
    key: str = Field(default="uuid", min_length=1)
    reference_key: str = Field(default="uuid", min_length=1)
    # reference column -> output column, in output order (TOML tables keep their order).
    columns: dict[str, str] = Field(default_factory=dict)

    _names = field_validator("columns")(_output_names)

    @field_validator("reference")
    @classmethod
    def _reference_is_a_key(cls, value: str) -> str:
        if not value or value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"{value!r} is not an object key such as 'reference/financial.csv'")
        return value


class ApiEnrichmentConfig(Section):
    """Join each valid row with what an HTTP API answers for its key: ``POST url`` with
    ``{"keys": [...]}`` (up to ``batch`` keys a call), answered ``{"results": {key: {field:
    value} | null}}``; retried with backoff; the answers are kept per run."""

    url: str
    key: str = Field(min_length=1)
    # answer field -> output column, in output order
    columns: dict[str, str] = Field(min_length=1)
    batch: int = Field(default=500, ge=1, le=100_000)
    attempts: int = Field(default=5, ge=1, le=100)
    retry_backoff: Duration = 0.2
    timeout: Duration = 10.0
    headers: dict[str, str] = Field(default_factory=dict)

    _names = field_validator("columns")(_output_names)
    _url = field_validator("url")(_http_url)


class CheckConfig(Section):
    """One extra row check: ``expr`` (a polars expression over the text columns, true where a
    row passes) with its ``reason``, or ``call`` (``module:function`` taking the frame and
    returning a boolean mask, true where a row passes, and a reason)."""

    expr: str | None = None
    call: str | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> CheckConfig:
        if (self.expr is None) == (self.call is None):
            raise ValueError("give exactly one of expr and call")
        if self.expr is not None and not self.reason:
            raise ValueError("an expr check needs a reason")
        if self.call is not None:
            _function_ref(self.call)
        return self


class FileChecksConfig(Section):
    """Checks of a whole file: its header, its number of records, an expected-count column
    (every record carries the file's record count)."""

    header: list[str] | None = None
    min_rows: int | None = Field(default=None, ge=0)
    max_rows: int | None = Field(default=None, ge=0)
    count_column: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _range(self) -> FileChecksConfig:
        low, high = self.min_rows, self.max_rows
        if low is not None and high is not None and low > high:
            raise ValueError("file.min_rows is greater than file.max_rows")
        return self


class WebhookConfig(Section):
    """A JSON POST per completed run (``Idempotency-Key`` = run id), retried with backoff;
    the run is COMPLETED only once it is delivered."""

    url: str
    attempts: int = Field(default=10, ge=1, le=1000)
    retry_backoff: Duration = 1.0
    timeout: Duration = 10.0
    headers: dict[str, str] = Field(default_factory=dict)

    _url = field_validator("url")(_http_url)


class IngestConfig(Section):
    """Streaming ingest (``POST /ingest/{pipeline}``, ``mrbatch ingest``): records are sealed
    into an input file every ``seal_records`` records or ``seal_interval``."""

    seal_records: int = Field(default=10_000, ge=1)
    seal_interval: Duration = 5.0
    max_request_bytes: int = Field(default=64 << 20, ge=1)
    # Names this ingest node in sealed keys (input/<prefix>ingest-<node>-<seq>.<ext>).
    node: str = Field(default="gateway", pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")


class DeclaredPipeline(Section):
    """``[pipelines.NAME]``: a pipeline of a team's own, chosen by an input prefix."""

    prefix: str
    schema_path: str = Field(alias="schema")
    format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote: str = Field(default='"', max_length=1)
    chunk_rows: int | None = Field(default=None, ge=1)
    max_rejected_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    checks: list[CheckConfig] = Field(default_factory=list)
    transforms: list[str] = Field(default_factory=list)
    # A user function (check or transform) that runs longer fails its chunk.
    timeout: Duration = Field(default=60.0, gt=0)
    enrichment: EnrichmentConfig | None = None
    api: ApiEnrichmentConfig | None = None
    file: FileChecksConfig = Field(default_factory=FileChecksConfig)
    # The output columns, in order (default: the schema's properties, the other input columns,
    # enrichment columns, then what transforms add).
    columns: list[str] | None = None
    output_format: Literal["csv"] = "csv"
    webhook: WebhookConfig | None = None
    # Directories (relative to the workspace) user modules are imported from, besides it.
    python_path: list[str] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("input/") or not value.endswith("/") or ".." in value.split("/"):
            raise ValueError(f"{value!r} is not an input prefix such as 'input/orders/'")
        return value

    @field_validator("transforms")
    @classmethod
    def _transforms(cls, values: list[str]) -> list[str]:
        return [_function_ref(v) for v in values]

    @model_validator(mode="after")
    def _consistent(self) -> DeclaredPipeline:
        if self.delimiter in ("\n", "\r", self.quote):
            raise ValueError("delimiter must not be a line break or the quote character")
        if self.quote in ("\n", "\r"):
            raise ValueError("quote must not be a line break")
        if self.enrichment is not None and self.api is not None:
            raise ValueError("declare one of enrichment (reference data) and api, not both")
        if self.file.header is not None and self.format == "jsonl":
            raise ValueError("file.header: JSON Lines records have no header")
        if self.columns is not None and (
            not self.columns or len(set(self.columns)) < len(self.columns)
        ):
            raise ValueError("columns must list distinct output column names")
        return self


class PipelineConfig(Section):
    schema_path: str = Field(default="pipeline/orders.schema.json", alias="schema")
    chunk_rows: int = Field(default=100_000, ge=1)
    # Fraction of rows a file may have rejected and still complete; above it the run FAILS.
    max_rejected_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    chunk_attempts: int = Field(default=4, ge=1, le=100)
    retry_backoff: Duration = 0.5
    # 0 means one worker per CPU core.
    workers: int = Field(default=0, ge=0, le=256)
    # A reference whose cache is estimated at up to this much is held in each worker's memory
    # (lookups cost what the chunk's keys cost); a larger one is scanned by every chunk. 0:
    # never held.
    reference_memory: ByteSize = REFERENCE_MEMORY_DEFAULT
    enrichment: EnrichmentConfig | None = None
    webhook: WebhookConfig | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PipelineSpec(BaseModel):
    """One pipeline, every default filled in (see :func:`mrbatch.config.settings.Config.spec`)."""

    model_config = ConfigDict(frozen=True)

    name: str
    prefix: str
    schema_path: str
    format: str = "auto"
    delimiter: str = ","
    quote: str = '"'
    chunk_rows: int
    max_rejected_fraction: float
    checks: list[CheckConfig] = Field(default_factory=list)
    transforms: list[str] = Field(default_factory=list)
    timeout: float = 60.0
    enrichment: EnrichmentConfig | None = None
    api: ApiEnrichmentConfig | None = None
    file: FileChecksConfig = Field(default_factory=FileChecksConfig)
    columns: list[str] | None = None
    webhook: WebhookConfig | None = None
    python_path: list[str] = Field(default_factory=list)
    escape_formulas: bool = False

    @property
    def functions(self) -> list[str]:
        """Every ``module:function`` the pipeline calls, in order."""
        return [c.call for c in self.checks if c.call] + list(self.transforms)


def resolve_spec(
    name: str, base: PipelineConfig, declared: dict[str, DeclaredPipeline], escape: bool
) -> PipelineSpec:
    """Pipeline ``name`` with every default filled in from ``[pipeline]`` (``base``)."""
    if name == DEFAULT_PIPELINE:
        return PipelineSpec(
            name=DEFAULT_PIPELINE,
            prefix="input/",
            schema_path=base.schema_path,
            format="csv",
            chunk_rows=base.chunk_rows,
            max_rejected_fraction=base.max_rejected_fraction,
            enrichment=base.enrichment,
            webhook=base.webhook,
            escape_formulas=escape,
        )
    pipeline = declared[name]
    fields = pipeline.model_dump(by_alias=False, exclude={"output_format"})
    fields.update(
        name=name,
        chunk_rows=pipeline.chunk_rows or base.chunk_rows,
        max_rejected_fraction=base.max_rejected_fraction
        if pipeline.max_rejected_fraction is None
        else pipeline.max_rejected_fraction,
        escape_formulas=escape,
    )
    return PipelineSpec.model_validate(fields)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"{name!r} is not a pipeline name (lowercase letters, digits, '-' and '_')"
        )
    return name


def format_for(spec: PipelineSpec, key: str) -> str:
    """The input format of ``key`` in ``spec``: the declared one, or by extension (CSV when
    the extension says nothing)."""
    if spec.format != "auto":
        return spec.format
    return _EXTENSIONS.get(PurePosixPath(key).suffix.lower(), "csv")


def split_quote(spec: PipelineSpec, input_format: str) -> str | None:
    """The quote character that keeps a line break inside a record when an input is split
    into chunks: none for JSON Lines (a JSON text has no raw line break), nor for a pipeline
    without quoting."""
    return None if input_format == "jsonl" or not spec.quote else spec.quote


def delimiter_for(spec: PipelineSpec, key: str) -> str:
    """A ``.tsv`` input of a pipeline that does not set its delimiter is tab-separated."""
    if spec.delimiter == "," and PurePosixPath(key).suffix.lower() == ".tsv":
        return "\t"
    return spec.delimiter


def spec_hash(spec: PipelineSpec, schema_bytes: bytes) -> str:
    """What a run pins as its pipeline's configuration: the spec and its schema's bytes."""
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(b"\0")
    digest.update(schema_bytes)
    return digest.hexdigest()[:20]
