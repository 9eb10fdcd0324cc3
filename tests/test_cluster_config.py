"""The [etcd] and [dask] sections and `mrbatch init`'s options for them: bad values fail at
load naming the key; init writes a workspace that selects them (no cluster needed to write a
Dask workspace; an etcd one is initialized on the cluster, see tests/contracts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrbatch.config.initialize import init_workspace, sample_bytes
from mrbatch.config.settings import load_config
from mrbatch.errors import ConfigError, UsageError
from tests.helpers import mrbatch


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mrbatch.toml"
    path.write_text('regions = ["a-1", "b-1"]\n' + text)
    (tmp_path / "pipeline").mkdir(exist_ok=True)
    (tmp_path / "pipeline" / "orders.schema.json").write_bytes(sample_bytes("orders.schema.json"))
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[backends]\ncontrol_plane = "etcd"\n', "etcd.endpoints is empty"),
        ('[etcd]\nendpoints = ["127.0.0.1:2379"]\n', "etcd.endpoints: '127.0.0.1:2379' is not"),
        ('[etcd]\nprefix = "mrbatch"\n', "etcd.prefix"),
        ('[etcd]\nlease_ttl = "500ms"\n', "etcd.lease_ttl: the lease lasts between"),
        ("[etcd]\nendpoint = []\n", "etcd.endpoint: unknown key"),
        ('[dask]\nscheduler = "somewhere:8786"\n', "dask.scheduler: 'somewhere:8786' is neither"),
        ("[dask]\nworkers = -1\n", "dask.workers"),
    ],
)
def test_bad_cluster_settings_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        load_config(_config(tmp_path, text))


def test_good_cluster_settings(tmp_path: Path) -> None:
    config = load_config(
        _config(
            tmp_path,
            '[backends]\ncontrol_plane = "etcd"\nexecutor = "dask"\n'
            '[etcd]\nendpoints = ["http://127.0.0.1:2379", "https://etcd-2.example:2379"]\n'
            'lease_ttl = "3s"\n[dask]\nscheduler = "tcp://10.0.0.5:8786"\n',
        )
    )
    assert config.etcd.lease_ttl == 3.0 and len(config.etcd.endpoints) == 2
    assert config.dask.scheduler == "tcp://10.0.0.5:8786"


def test_init_options(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs the cluster's client URLs"):
        init_workspace(tmp_path / "a", control_plane="etcd")
    with pytest.raises(UsageError, match="unknown executor 'ray'"):
        init_workspace(tmp_path / "b", executor="ray")
    with pytest.raises(UsageError, match="--dask-scheduler goes with --executor dask"):
        init_workspace(tmp_path / "c", dask_scheduler="tcp://h:8786")
    result = mrbatch(
        tmp_path, "init", "ws", "--executor", "dask", "--dask-scheduler", "tcp://127.0.0.1:8786"
    )
    assert result.returncode == 0, result.stderr
    config = load_config(tmp_path / "ws" / "mrbatch.toml")
    assert (config.backends.executor, config.dask.scheduler) == ("dask", "tcp://127.0.0.1:8786")
    assert config.backends.control_plane == "sqlite" and config.etcd.prefix.startswith("/mrbatch/")
    unreachable = mrbatch(
        tmp_path, "init", "ws2", "--control-plane", "etcd", "--etcd-endpoints",
        "http://127.0.0.1:9",  # nothing listens on the discard port
    )  # fmt: skip
    assert unreachable.returncode == 1
    assert "etcd is unreachable" in unreachable.stderr and "mrbatch up" in unreachable.stderr
    written = load_config(tmp_path / "ws2" / "mrbatch.toml")
    assert written.etcd.endpoints == ["http://127.0.0.1:9"]
