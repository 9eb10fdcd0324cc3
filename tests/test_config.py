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


TWO = 'regions = ["a-1", "b-2"]\n'  # one region is refused
ENRICH = TWO + "[pipeline.enrichment]\n"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (TWO + "[pipeline]\nchunk_rows = 0\n", "pipeline.chunk_rows", "greater"),
        (
            TWO + "[pipeline]\nchunck_rows = 5\n",
            "pipeline.chunck_rows",
            "unknown key",
        ),
        ('regions = ["US EAST"]\n', "regions", "not a region name"),
        ('regions = ["a-1", "a-1"]\n', "regions", "listed twice"),
        ("data_dir = 'x'\n", "regions", "required key is missing"),
        (
            TWO + '[backends]\nobject_store = "ftp"\n',
            "backends.object_store",
            "unknown backend",
        ),
        (
            TWO + '[gateway]\nlink_expiry = "soon"\n',
            "gateway.link_expiry",
            "not a duration",
        ),
        (
            TWO + "[pipeline]\nmax_rejected_fraction = 2\n",
            "pipeline.max_rejected_fraction",
            "less",
        ),
        (TWO + '[backends]\nnotifier = "smtp"\n', "notify.smtp_host", "not set"),
        (TWO + '[notify]\nsmtp_host = "h"\n', "notify.smtp_host", "outbox"),
        (TWO + "[services.api]\ncommand = []\n", "services.api.command", "at least 1"),
        (TWO + '[services.api]\ncommand = [""]\n', "services.api.command", "program"),
        (TWO + '[services."My API"]\ncommand = ["x"]\n', "services", "service name"),
        (TWO + '[services.api]\ncommand = ["x"]\nrun = ["x"]\n', "services.api.run", "unknown key"),
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
        (TWO + '[pipeline]\nschema = "nope.json"\n', "pipeline.schema", "cannot read"),
        (TWO + '[gateway]\npublic_url = "ftp://x"\n', "gateway.public_url", "http"),
        (TWO + '[notify]\nto = ["ops"]\n', "notify.to", "not a mail address"),
        (TWO + "[notify]\nto = []\n", "notify.to", "at least 1"),
        # One region is refused at load, as `mrbatch init` refuses it.
        ('regions = ["a-1"]\n', "regions", "at least two different regions"),
        # An unknown key suggests the nearest one.
        (
            TWO + "[pipeline]\nchunck_rows = 5\n",
            "pipeline.chunck_rows",
            "did you mean pipeline.chunk_rows?",
        ),
        (TWO + "[wach]\n", "wach", "did you mean watch?"),
        (
            TWO + '[gateway]\nlink_expiry = "1h"\nmax_link_lifetim = "2h"\n',
            "gateway.max_link_lifetim",
            "did you mean gateway.max_link_lifetime?",
        ),
        # The AWS backends' settings: the key, and never a credential.
        (TWO + '[s3]\nendpoint_url = "localhost:9000"\n', "s3.endpoint_url", "URL"),
        (
            TWO + '[s3.regions.a-1]\nendpoint_url = "ftp://x"\n',
            "s3.regions.a-1.endpoint_url",
            "not an endpoint URL",
        ),
        (
            TWO + '[dynamodb]\nendpoint_url = "http://h:1/path"\n',
            "dynamodb.endpoint_url",
            "scheme, host and port only",
        ),
        (
            TWO + '[s3]\naws_secret_access_key = "x"\n',
            "s3",
            "credentials are never read from mrbatch.toml",
        ),
        (
            TWO + '[dynamodb.regions.a-1]\naws_access_key_id = "x"\n',
            "dynamodb.regions.a-1",
            "standard AWS chain",
        ),
        (TWO + '[s3]\nbucket = "Bad_Name-{region}"\n', "s3.bucket", "bucket name"),
        (
            TWO + '[s3.regions.a-1]\nbucket = "x"\n',
            "s3.regions.a-1.bucket",
            "bucket name",
        ),
        (TWO + '[dynamodb]\ntable = "t"\n', "dynamodb.table", "table name"),
        (TWO + '[s3.regions.c-3]\nbucket = "ccc"\n', "s3.regions.c-3", "not one"),
        (TWO + '[s3]\nprofile = "a b"\n', "s3.profile", "not a profile name"),
        (
            TWO + '[backends]\nreplication = "native"\n',
            "backends.replication",
            "object_store = 's3'",
        ),
        (TWO + '[backends]\nreplication = "crr"\n', "backends.replication", "'"),
        (TWO + '[pipeline]\nreference_memory = "lots"\n', "pipeline.reference_memory", "size"),
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
    path = _config(tmp_path, TWO, schema=schema)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and "pipeline.schema" in message and words in message, message


def test_rules_across_sections_are_not_at_the_top_level(tmp_path: Path) -> None:
    for text, start in (
        (TWO + '[backends]\nobject_store = "ftp"\n', "backends.object_store: "),
        (TWO + '[backends]\nnotifier = "smtp"\n', "backends.notifier is"),
    ):
        path = _config(tmp_path, text)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.message.startswith(f"{path}: {start}"), caught.value.message
        assert "(top level)" not in caught.value.message


def test_a_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = _config(tmp_path, TWO + "[pipeline]\nchunk_rows = = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.message.startswith(f"{path}:3:14: not valid TOML at line 3, column 14")
    assert caught.value.hint == "line 3 reads: 'chunk_rows = = 5'"


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_config(tmp_path, "regions = [\n"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")


def test_defaults_and_durations(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, TWO + '[gateway]\nlink_expiry = "15m"\n'))
    assert config.gateway.link_expiry == 900.0
    assert config.pipeline.reference_memory == 80 * 2**20
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
