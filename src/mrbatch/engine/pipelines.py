"""A pipeline as the engine runs it: what a run pins at claim (:func:`pins`), and in a worker
the loaded pipeline (schema, reference join, row checks and transforms, the HTTP client),
checked against those pins before any chunk is computed, so one output never mixes two
versions of the configuration or the code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config.pipelines import PipelineSpec, spec_hash
from ..config.workspace import Workspace
from ..errors import UserCodeError
from ..pipeline.http_enrich import ApiClient
from ..pipeline.reference import Enrichment
from ..pipeline.schema import RecordSchema
from ..pipeline.usercode import Rules, code_version, load_rules

__all__ = ["LoadedPipeline", "load_pipeline", "pins"]


def _schema_bytes(ws: Workspace, spec: PipelineSpec) -> bytes:
    try:
        return ws.resolve(spec.schema_path).read_bytes()
    except OSError:
        return b""


def pins(ws: Workspace, spec: PipelineSpec) -> tuple[str, str]:
    """(configuration hash, code version) of ``spec`` as it is now."""
    return spec_hash(spec, _schema_bytes(ws, spec)), code_version(spec, ws.root)


@dataclass(frozen=True)
class LoadedPipeline:
    spec: PipelineSpec
    hash: str
    schema: RecordSchema
    enrichment: Enrichment | None
    rules: Rules | None
    api: ApiClient | None

    def columns(self) -> list[str]:
        """The record columns of a format without a header (JSON Lines): the schema's
        properties, its other required names, and the names the pipeline joins or counts on."""
        names = [*self.schema.properties, *self.schema.required]
        for join in (self.spec.enrichment, self.spec.api):
            if join is not None:
                names.append(join.key)
        if self.spec.file.count_column:
            names.append(self.spec.file.count_column)
        return list(dict.fromkeys(names))


def load_pipeline(
    ws: Workspace, spec: PipelineSpec, pinned_hash: str | None, pinned_code: str | None
) -> LoadedPipeline:
    """Load ``spec`` in this process; UserCodeError when its configuration or code is not what
    the run pinned (the caller reloads the workspace once before believing it)."""
    digest = spec_hash(spec, _schema_bytes(ws, spec))
    if pinned_hash is not None and digest != pinned_hash:
        raise UserCodeError(
            f"the configuration of pipeline {spec.name} changed since this run was claimed"
            f" (hash {pinned_hash} then, {digest} now); `mrbatch redrive` runs it again with"
            " the new one"
        )
    enrichment = None
    if spec.enrichment is not None:
        enrichment = Enrichment(
            key=spec.enrichment.key,
            reference_key=spec.enrichment.reference_key,
            columns=dict(spec.enrichment.columns),
        )
    rules = load_rules(spec, ws.root, pinned_code) if (spec.checks or spec.transforms) else None
    if rules is None and pinned_code is not None and spec.functions == []:
        current = code_version(spec, Path(ws.root))
        if current != pinned_code:
            raise UserCodeError(
                f"mrbatch's version changed since this run was claimed ({pinned_code} then,"
                f" {current} now); `mrbatch redrive` runs it again"
            )
    return LoadedPipeline(
        spec=spec,
        hash=digest,
        schema=RecordSchema.from_file(ws.resolve(spec.schema_path)),
        enrichment=enrichment,
        rules=rules,
        api=ApiClient(spec.api) if spec.api is not None else None,
    )
