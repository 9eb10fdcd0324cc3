"""Bad configuration fails at load, naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrbatch.config.initialize import sample_bytes
from mrbatch.config.settings import load_config
from mrbatch.config.values import parse_duration
from mrbatch.config.workspace import Workspace, find_config
from mrbatch.errors import ConfigError


def _config(tmp_path: Path, text: str, schema: str | None = None) -> Path:
    """A config file, with the sample schema (or ``schema``) where the pipeline expects it."""
    path = tmp_path / "mrbatch.toml"
    path.write_text(text)
    (tmp_path / "pipeline").mkdir(exist_ok=True)
    (tmp_path / "pipeline" / "orders.schema.json").write_text(
        schema if schema is not None else sample_bytes("orders.schema.json").decode()
    )
    return path


ENRICH = 'regions = ["a-1"]\n[pipeline.enrichment]\n'


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('regions = ["us-east-1"]\n[pipeline]\nchunk_rows = 0\n', "pipeline.chunk_rows", "greater"),
        (
            'regions = ["us-east-1"]\n[pipeline]\nchunck_rows = 5\n',
            "pipeline.chunck_rows",
            "unknown key",
        ),
        ('regions = ["US EAST"]\n', "regions", "not a region name"),
        ('regions = ["a-1", "a-1"]\n', "regions", "listed twice"),
        ("data_dir = 'x'\n", "regions", "required key is missing"),
        (
            'regions = ["a-1"]\n[backends]\nobject_store = "ftp"\n',
            "backends.object_store",
            "unknown backend",
        ),
        (
            'regions = ["a-1"]\n[gateway]\nlink_expiry = "soon"\n',
            "gateway.link_expiry",
            "not a duration",
        ),
        (
            'regions = ["a-1"]\n[pipeline]\nmax_rejected_fraction = 2\n',
            "pipeline.max_rejected_fraction",
            "less",
        ),
        ('regions = ["a-1"]\n[backends]\nnotifier = "smtp"\n', "notify.smtp_host", "not set"),
        ('regions = ["a-1"]\n[notify]\nsmtp_host = "h"\n', "notify.smtp_host", "outbox"),
        # Pipeline settings that could only fail inside a worker fail here, at load.
        (ENRICH + 'key = ""\n', "pipeline.enrichment.key", "at least 1 character"),
        (ENRICH + 'reference_key = ""\n', "pipeline.enrichment.reference_key", "at least 1"),
        (
            ENRICH + '[pipeline.enrichment.columns]\na = "X"\nb = "X"\n',
            "pipeline.enrichment.columns",
            "'X' is named twice",
        ),
        (
            ENRICH + '[pipeline.enrichment.columns]\na = "__mrbatch_key"\n',
            "pipeline.enrichment.columns",
            "reserved",
        ),
        (
            ENRICH + '[pipeline.enrichment.columns]\na = ""\n',
            "pipeline.enrichment.columns",
            "empty",
        ),
        (
            ENRICH + '[pipeline.enrichment.columns]\nunitsSold = "Country"\n',
            "pipeline.enrichment.columns",
            "also a property of the schema orders.schema.json",
        ),
        ('regions = ["a-1"]\n[pipeline]\nschema = "nope.json"\n', "pipeline.schema", "cannot read"),
        ('regions = ["a-1"]\n[gateway]\npublic_url = "ftp://x"\n', "gateway.public_url", "http"),
        ('regions = ["a-1"]\n[notify]\nto = ["ops"]\n', "notify.to", "not a mail address"),
        ('regions = ["a-1"]\n[notify]\nto = []\n', "notify.to", "at least 1"),
        # The AWS backends' settings: the key, and never a credential.
        ('regions = ["a-1"]\n[s3]\nendpoint_url = "localhost:9000"\n', "s3.endpoint_url", "URL"),
        (
            'regions = ["a-1"]\n[s3.regions.a-1]\nendpoint_url = "ftp://x"\n',
            "s3.regions.a-1.endpoint_url",
            "not an endpoint URL",
        ),
        (
            'regions = ["a-1"]\n[dynamodb]\nendpoint_url = "http://h:1/path"\n',
            "dynamodb.endpoint_url",
            "scheme, host and port only",
        ),
        (
            'regions = ["a-1"]\n[s3]\naws_secret_access_key = "x"\n',
            "s3",
            "credentials are never read from mrbatch.toml",
        ),
        (
            'regions = ["a-1"]\n[dynamodb.regions.a-1]\naws_access_key_id = "x"\n',
            "dynamodb.regions.a-1",
            "standard AWS chain",
        ),
        ('regions = ["a-1"]\n[s3]\nbucket = "Bad_Name-{region}"\n', "s3.bucket", "bucket name"),
        (
            'regions = ["a-1"]\n[s3.regions.a-1]\nbucket = "x"\n',
            "s3.regions.a-1.bucket",
            "bucket name",
        ),
        ('regions = ["a-1"]\n[dynamodb]\ntable = "t"\n', "dynamodb.table", "table name"),
        ('regions = ["a-1"]\n[s3.regions.b-2]\nbucket = "bbb"\n', "s3.regions.b-2", "not one"),
        ('regions = ["a-1"]\n[s3]\nprofile = "a b"\n', "s3.profile", "not a profile name"),
        (
            'regions = ["a-1"]\n[backends]\nreplication = "native"\n',
            "backends.replication",
            "object_store = 's3'",
        ),
        ('regions = ["a-1"]\n[backends]\nreplication = "crr"\n', "backends.replication", "'"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and key in message and words in message, message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ("{", "not valid JSON"),
        ('{"type": "object", "properties": {"a": {"type": "array"}}}', "array"),
        ('{"properties": {"a": {"minimum": 1}}}', "minimum"),
        ('{"properties": {"a": {"pattern": "(?<=x)y"}}}', "pattern"),
    ],
)
def test_a_schema_that_cannot_be_enforced_fails_at_load(
    tmp_path: Path, schema: str, words: str
) -> None:
    path = _config(tmp_path, 'regions = ["a-1"]\n', schema=schema)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and "pipeline.schema" in message and words in message, message


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_config(tmp_path, "regions = [\n"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")


def test_defaults_and_durations(tmp_path: Path) -> None:
    config = load_config(
        _config(tmp_path, 'regions = ["a-1", "b-2"]\n[gateway]\nlink_expiry = "15m"\n')
    )
    assert config.gateway.link_expiry == 900.0
    assert config.gateway.host == "127.0.0.1"
    assert config.backends.object_store == "local"
    assert [parse_duration(v) for v in (5, "500ms", "2s", "1h", "1.5m")] == [
        5.0,
        0.5,
        2.0,
        3600.0,
        90.0,
    ]


def test_workspace_found_from_a_subdirectory(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = workspace.root / "pipeline"
    assert find_config(deep) == workspace.config_path
    monkeypatch.chdir(deep)
    assert Workspace.load().root == workspace.root
    monkeypatch.chdir(workspace.root.parent)
    with pytest.raises(ConfigError, match=r"no mrbatch\.toml"):
        Workspace.load()


def test_secrets_are_private(workspace: Workspace) -> None:
    for name in ("token", "signing.key"):
        mode = (workspace.data_dir / name).stat().st_mode & 0o777
        assert mode == 0o600, oct(mode)
    assert len(workspace.token) >= 32
