"""``mrbatch init``: a new workspace with the sample pipeline, ready for ``mrbatch up``."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from importlib import resources
from pathlib import Path

from .. import backends
from ..errors import UnavailableError, UsageError
from .examples import example_config, write_example
from .settings import CONFIG_NAME, REGION_NAME
from .workspace import PRIVATE_UMASK, Workspace

__all__ = [
    "DEFAULT_REGIONS",
    "SAMPLE_ENRICHMENT",
    "init_workspace",
    "sample_bytes",
    "seed_reference",
]

DEFAULT_REGIONS = ["us-east-1", "us-west-2"]
SAMPLE_ENRICHMENT = {
    "unitsSold": "Units Sold",
    "unitPrice": "Unit Price",
    "unitCost": "Unit Cost",
    "totalRevenue": "Total Revenue",
    "totalCost": "Total Cost",
    "totalProfit": "Total Profit",
}

_TEMPLATE = """\
# mrbatch workspace. Every command finds this file from the current directory (or --config).
# Durations accept seconds (60) or text ("500ms", "60s", "15m", "1h", "7d"); sizes bytes or
# text ("500MB", "10GiB").

# The regions; the first listed started ACTIVE, the others STANDBY.
regions = {regions}
# Buckets, state replicas, control plane, outbox, logs and pid files live here.
data_dir = ".mrbatch"

[backends]
object_store = "{object_store}"{store_note}
state_table = "{state_table}"{table_note}
control_plane = "{control_plane}"{control_pad}# the routing control: "sqlite" (a file) or "etcd"
notifier = "outbox"           # "outbox" writes .eml files; "smtp" needs notify.smtp_host
executor = "{executor}"{executor_pad}# or "inline" (in the region process) or "dask"
replication = "builtin"       # "native": S3 CRR and DynamoDB global tables copy, mrbatch watches

[pipeline]
schema = "pipeline/orders.schema.json"   # JSON Schema (draft-07) every row is checked against
chunk_rows = {chunk_rows}                # rows per chunk task
max_rejected_fraction = 0.1              # above this share of rejected rows a run FAILS
chunk_attempts = 4                       # tries per chunk before the run fails
retry_backoff = "500ms"                  # first retry delay; doubles each time
workers = 0                              # chunk workers per region; 0 = one per CPU core
reference_memory = "80MiB"               # a reference this small is held by each worker
                                         # (about twice this in memory); "0": never

[pipeline.enrichment]
reference = "reference/financial.csv"    # reference data, an object in the bucket
key = "uuid"                             # input column to join on
reference_key = "uuid"                   # reference column to join on
# reference column = output column, in output order
columns = {{ {columns} }}

[output]
escape_formulas = false      # true: prefix spreadsheet formula cells (=, +, -, @) with '

[gateway]
host = "127.0.0.1"           # off loopback, reads (dashboard, API, metrics) need the token
port = {port}
link_expiry = "60m"          # presigned links expire after this
max_link_lifetime = "7d"     # no link is signed, or honoured, for longer
# allowed_hosts = ["batch.example.com"]   # Host names besides localhost and the bound host
max_upload_bytes = "10GiB"   # one upload; larger ones are refused (413)
spool_quota_bytes = "20GiB"  # all uploads being received at once

[notify]
from = "mrbatch@localhost"
to = ["batch-owners@localhost"]
# smtp_host = "127.0.0.1"    # with backends.notifier = "smtp"
# smtp_port = 25
attempts = 10                # a run FAILS (output kept) when its mail cannot be sent

[replication]
interval = "100ms"

[timing]
poll_interval = "50ms"
heartbeat_interval = "500ms"
rescan_interval = "30s"

[failover]
desired_rto = "60s"
max_wait = "60s"
min_switch_interval = "60s"

[retention]
enabled = true               # the region loop collects garbage every interval (`mrbatch gc`)
age = "7d"                   # finished runs' versions and records, superseded bytes, tombstones
versions = 1                 # the newest N finished versions of each input are kept anyway
interval = "10m"

# The etcd cluster, with backends.control_plane = "etcd" (every region lists every member).
[etcd]
endpoints = {etcd_endpoints}
prefix = "{etcd_prefix}"   # this workspace's keys; one cluster can serve several
lease_ttl = "2s"              # a region that cannot renew its lease stops publishing
timeout = "1s"                # longest wait for the cluster's answer

# The Dask cluster, with backends.executor = "dask".
[dask]
scheduler = "{dask_scheduler}"{dask_pad}# "local": a LocalCluster per region process; or tcp://HOST:8786
workers = 0                   # LocalCluster worker processes; 0 = pipeline.workers or one per core

[watch]
heartbeat_timeout = "5s"
max_error_rate = 0.5
interval = "1s"
unhealthy_checks = 2
require_approval = false     # --auto-failover waits for `mrbatch plan approve` (approval.timeout)
evaluate_interval = "60s"    # `watch` runs `plan evaluate` and the standby parity checks

[approval]
timeout = "0s"               # without --yes or a terminal, wait this long for `plan approve`
                             # or POST /api/plans/ID/approve (0: refuse at once)

[rpo]
# max_files = 0              # the rpo-gate step refuses a switch that would leave more inputs
# max_bytes = "0B"           # (or bytes) behind without a per-key approval; unset: list only

[reports]
settle = "30s"               # a report waits this long for the runs in flight at the fence

[drill]
# every = "7d"               # `watch` runs `mrbatch drill` this often, inside a window below
windows = []                 # e.g. ["sat 02:00-04:00", "mon-fri 13:00-14:00"] (UTC)
freeze = false               # true: no drill starts (`mrbatch drill freeze` does it at run time)
max_backlog = 100            # no drill while replication has more than this left to copy
max_runs_in_flight = 10      # ... or the active region drives more runs than this
files = 6                    # the drill's load: files of `rows` rows, uploaded through it
rows = 500
mode = "graceful"            # graceful: wait for replication without a bound; or ungraceful
# rto_budget = "60s"         # each switch's RTO budget (default: failover.desired_rto)

[tracing]
# otlp_endpoint = "http://127.0.0.1:4318"   # OpenTelemetry traces over OTLP/HTTP (extra `otel`)

[supervisor]
restart = true               # start a region, replicator or gateway process again when it dies
restart_backoff = "1s"       # pause before the first restart; doubles with each death in a row
restart_max_backoff = "30s"  # up to this
stable_after = "60s"         # up this long: the next death pauses restart_backoff again

# Recovery plans: ordered steps; a bare name is a built-in step. Custom steps:
#   {{ name = "page", run = "notify-oncall $MRBATCH_TARGET", timeout = "10s" }}
#   {{ name = "dns", call = "mypkg.hooks:switch_dns", timeout = "30s" }}
#   {{ name = "both", parallel = [ {{ name = "a", run = "..." }}, {{ name = "b", run = "..." }} ] }}
# Or put [failover] and [failback] in a file named here: file = "plans.toml"
[plans.failover]
steps = ["readiness", "approval", "rpo-gate", "fence", "wait-replication", "activate",
         "reconcile"]

[plans.failback]
steps = ["readiness", "catch-up", "approval", "rpo-gate", "fence", "wait-replication",
         "activate", "reconcile", "standby-previous"]
"""

_NOTES = {
    "local": "        # one directory per region",
    "sqlite": "        # one SQLite replica per region",
    "s3": "           # one versioned bucket per region, see [s3]",
    "dynamodb": "  # one table per region, see [dynamodb]",
}

# Credentials are never written here: boto3's standard chain finds them.
_S3 = """
[s3]
# One versioned bucket per region ({region}: the region's name), created by `mrbatch up`.
bucket = "mrbatch-SUFFIX-{region}"
ENDPOINTmultipart_threshold = 67108864    # larger objects are uploaded in parts of part_size
part_size = 16777216
presign_mail = false                # true: the mail also carries S3's own presigned URL
# Per region: another bucket, endpoint (an S3-compatible store), signing region or profile.
# [s3.regions.us-west-2]
# endpoint_url = "https://minio.example.com:9000"
# aws_region = "us-west-2"
# profile = "west"
"""

_DYNAMODB = """
[dynamodb]
# One table per region ({region}: the region's name), created by `mrbatch up`.
table = "mrbatch-SUFFIX-{region}"
ENDPOINT# [dynamodb.regions.us-west-2]     # per region: table, endpoint_url, aws_region, profile
"""


def sample_bytes(name: str) -> bytes:
    return resources.files("mrbatch.config.samples").joinpath(name).read_bytes()


def _pad(value: str, width: int) -> str:
    return " " * max(1, width - len(value))


def init_workspace(
    directory: Path,
    *,
    regions: list[str] | None = None,
    port: int = 8740,
    chunk_rows: int = 100_000,
    force: bool = False,
    control_plane: str = "sqlite",
    etcd_endpoints: list[str] | None = None,
    executor: str = "process-pool",
    dask_scheduler: str | None = None,
    example: str | None = None,
    api_port: int = 8741,
    object_store: str = "local",
    state_table: str = "sqlite",
    endpoint_url: str | None = None,
) -> Workspace:
    regions = regions or list(DEFAULT_REGIONS)
    if control_plane == "etcd" and not etcd_endpoints:
        raise UsageError(
            "--control-plane etcd needs the cluster's client URLs",
            hint="pass --etcd-endpoints http://HOST:2379,http://HOST2:2379,...",
        )
    chosen = {
        "object_store": object_store,
        "state_table": state_table,
        "control_plane": control_plane,
        "executor": executor,
    }
    for kind, name in chosen.items():
        if name not in backends.REGISTRY[kind]:
            known = ", ".join(sorted(backends.REGISTRY[kind]))
            raise UsageError(f"unknown {kind.replace('_', ' ')} {name!r} (known: {known})")
    if dask_scheduler and executor != "dask":
        raise UsageError("--dask-scheduler goes with --executor dask")
    if endpoint_url and object_store != "s3" and state_table != "dynamodb":
        raise UsageError("--endpoint-url goes with --object-store s3 or --state-table dynamodb")
    for name in regions:
        if not REGION_NAME.match(name):
            raise UsageError(
                f"{name!r} is not a region name",
                hint="use lowercase letters, digits and '-', e.g. us-east-1,us-west-2",
            )
    if len(set(regions)) != len(regions) or len(regions) < 2:
        raise UsageError("give at least two different regions, e.g. --regions us-east-1,us-west-2")
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / CONFIG_NAME
    if config_path.exists() and not force:
        raise UsageError(
            f"{config_path} exists already", hint="use that workspace, or pass --force to rewrite"
        )
    columns = ", ".join(f'{k} = "{v}"' for k, v in SAMPLE_ENRICHMENT.items())
    scheduler = dask_scheduler or "local"
    text = _TEMPLATE.format(
        regions=json.dumps(regions),
        columns=columns,
        port=port,
        chunk_rows=chunk_rows,
        control_plane=control_plane,
        control_pad=_pad(control_plane, 12),
        executor=executor,
        executor_pad=_pad(executor, 17),
        etcd_endpoints=json.dumps(list(etcd_endpoints or [])),
        etcd_prefix=f"/mrbatch/{uuid.uuid4().hex[:12]}",
        dask_scheduler=scheduler,
        dask_pad=_pad(scheduler, 16),
        object_store=object_store,
        state_table=state_table,
        store_note=_NOTES.get(object_store, ""),
        table_note=_NOTES.get(state_table, ""),
    )
    # Bucket names are global: a random part keeps two workspaces' buckets apart.
    suffix = secrets.token_hex(4)
    endpoint = f'endpoint_url = "{endpoint_url}"   # every region on this endpoint\n'
    for aws, section in ((object_store == "s3", _S3), (state_table == "dynamodb", _DYNAMODB)):
        if aws:
            section = section.replace("SUFFIX", suffix)
            text += section.replace("ENDPOINT", endpoint if endpoint_url else "")
    if example is not None:
        text += example_config(example, api_port=api_port)
    pipeline_dir = directory / "pipeline"
    pipeline_dir.mkdir(exist_ok=True)
    if example is not None:
        write_example(directory, example)
    config_path.write_text(text, encoding="utf-8")
    (pipeline_dir / "orders.schema.json").write_bytes(sample_bytes("orders.schema.json"))
    (pipeline_dir / "financial.csv").write_bytes(sample_bytes("financial.csv"))
    (pipeline_dir / "orders-sample.csv").write_bytes(sample_bytes("orders.csv"))

    ws = Workspace.load(config_path)
    # The data directory and everything init puts in it are its owner's alone, whoever calls
    # (the CLI and the daemons run with this umask throughout; a library caller may not).
    previous = os.umask(PRIVATE_UMASK)
    try:
        ws.data_dir.mkdir(parents=True, exist_ok=True)
        ws.make_private()
        ws.token  # noqa: B018 - created now, mode 0600
        ws.signing_key  # noqa: B018
        try:
            backends.open_control_plane(ws).initialize(regions, regions[0])
        except UnavailableError as exc:
            raise UnavailableError(
                f"{config_path} is written, but the routing control could not be created:"
                f" {exc.message}",
                hint="`mrbatch up` creates it once the control plane answers",
            ) from exc
        try:
            backends.provision(ws)
            seed_reference(ws)
        except UnavailableError as exc:
            raise UnavailableError(
                f"{exc.message} (the workspace is written: {config_path})",
                hint="`mrbatch up` creates the buckets and tables and seeds the reference data"
                " once the endpoint answers",
            ) from exc
    finally:
        os.umask(previous)
    return ws


def seed_reference(ws: Workspace) -> list[str]:
    """Put the sample reference data in every region that has none (as a deployment would;
    later versions replicate). Returns the regions seeded."""
    reference = ws.config.pipeline.enrichment
    seeded: list[str] = []
    for region in ws.regions:
        backends.open_state_table(ws, region)
        store = backends.open_object_store(ws, region)
        if reference is not None and store.head(reference.reference) is None:
            store.put(reference.reference, sample_bytes("financial.csv"))
            seeded.append(region)
    return seeded
