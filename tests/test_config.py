"""Bad configuration fails at load, naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrbatch.config import load_config, parse_duration
from mrbatch.errors import ConfigError
from mrbatch.workspace import Workspace, find_config


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mrbatch.toml"
    path.write_text(text)
    return path


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
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and key in message and words in message, message
    assert caught.value.exit_code == 2


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
