"""RPO 0 for every acknowledged upload: each accepted version of an input (key + content hash) is
processed once, whichever region accepted it and whatever was uploaded after it — versions
overwritten within one poll interval, and versions that lose replication's merge of one key
to a version accepted by the other region during a partition."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.access.accesspoint import AccessPoint
from mrbatch.access.ledger import read_accepted
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.faults import FaultPoints
from mrbatch.model.keys import run_id_for, version_input_key, version_output_key
from mrbatch.model.records import FileRun, RunStatus
from mrbatch.observe import views
from mrbatch.runtime import supervisor
from tests.conftest import Deployment, make_workspace
from tests.expected import expected_output
from tests.gateway_support import raw
from tests.helpers import eventually, mail_link, mails, mrbatch

LINES = sample_bytes("orders.csv").split(b"\n")


def version(rows: int) -> bytes:
    """A distinct, valid input: the sample's header and its first ``rows`` orders."""
    return b"\n".join(LINES[: rows + 1]) + b"\n"


def runs_of(ws: Workspace, key: str) -> list[FileRun]:
    return [r for r in views.all_runs(ws) if r.input_key == key]


def all_terminal(ws: Workspace, bodies: list[bytes], key: str, timeout: float = 90) -> None:
    wanted = {run_id_for(key, _sha(b)) for b in bodies}

    def done() -> bool:
        runs = {r.run_id: r for r in runs_of(ws, key)}
        return wanted <= set(runs) and all(runs[i].status.terminal for i in wanted)

    eventually(done, timeout, f"a terminal run for each of the {len(bodies)} versions of {key}")


def _sha(body: bytes) -> str:
    import hashlib

    return hashlib.sha256(body).hexdigest()


def check_versions(ws: Workspace, key: str, bodies: list[bytes], shown: bytes) -> None:
    """One COMPLETED run per version, each version's own result kept, output/<p> showing
    ``shown``'s result, one mail per version linking that version's own output."""
    runs = {r.run_id: r for r in runs_of(ws, key)}
    assert len(runs) == len(bodies), sorted(r.run_id for r in runs.values())
    active = backends.open_control_plane(ws).routing().active_region
    store = backends.open_object_store(ws, active)
    for body in bodies:
        run = runs[run_id_for(key, _sha(body))]
        assert run.status is RunStatus.COMPLETED, run.reason
        assert run.result_key == version_output_key(run.run_id, key)
        assert store.get(run.result_key) == expected_output(body)
    assert store.get(key.replace("input/", "output/", 1)) == expected_output(shown)
    linked = {}
    for message in mails(ws):
        status, _headers, payload = raw(ws, "GET", mail_link(message).split(ws.gateway_url)[1])
        assert status == 200
        linked[message["Message-ID"]] = payload
    for body in bodies:
        assert linked[f"<{run_id_for(key, _sha(body))}@mrbatch>"] == expected_output(body)


def verify_final(ws: Workspace) -> dict:  # type: ignore[type-arg]
    result = mrbatch(ws, "verify", "--final", "--wait", "30s", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["ok"], data["violations"]
    assert data["counts"]["lost"] == data["counts"]["duplicated"] == 0
    return data


# --------------------------------------------------------------------------- overwrites


def test_versions_overwritten_before_any_poll_are_each_processed(tmp_path: Path) -> None:
    """Five versions of one key accepted while no region polls at all (the strongest form of
    'within one poll interval'): every one gets a run, in acceptance order."""
    ws = make_workspace(tmp_path / "ws", chunk_rows=200)
    bodies = [version(100 + 37 * i) for i in range(5)]
    access = AccessPoint(ws)
    for body in bodies:
        located = access.put("input/hot.csv", body, source="put")
        assert located.accepted is not None and located.accepted.sha256 == _sha(body)
    entries, unreadable = read_accepted(ws)
    assert not unreadable and [e.sha256 for e in entries] == [_sha(b) for b in bodies]
    store = backends.open_object_store(ws, ws.regions[0])
    for entry in entries:  # each version's bytes are kept under its own key
        assert store.get(version_input_key(entry.run_id, entry.key)) == bodies[entries.index(entry)]
    with Deployment(ws):
        all_terminal(ws, bodies, "input/hot.csv")
        check_versions(ws, "input/hot.csv", bodies, shown=bodies[-1])
        runs = sorted(runs_of(ws, "input/hot.csv"), key=lambda r: r.order)
        assert [r.input_sha256 for r in runs] == [_sha(b) for b in bodies]
        # Processed in acceptance order: a version leaves CLAIMED only after the one
        # accepted before it has finished.
        for before, after in itertools.pairwise(runs):
            finished_at = next(h["at"] for h in before.history if h["status"] == "COMPLETED")
            split_at = next(h["at"] for h in after.history if h["status"] == "SPLIT")
            assert split_at >= finished_at, (before.run_id, after.run_id)
        verify_final(ws)


def test_rapid_overwrites_through_the_gateway_and_put(deployment: Deployment) -> None:
    ws = deployment.ws
    headers = {"authorization": f"Bearer {ws.token}"}
    bodies = [version(50 + 11 * i) for i in range(6)]
    answers: list[dict] = []  # type: ignore[type-arg]

    def upload(body: bytes) -> None:
        status, _h, payload = raw(ws, "PUT", "/objects/input/hot.csv", body=body, headers=headers)
        assert status == 200, payload
        answers.append(json.loads(payload))

    # Back to back, and two at the very same moment, all well within one poll interval.
    for body in bodies[:4]:
        upload(body)
    pair = [threading.Thread(target=upload, args=(b,)) for b in bodies[4:]]
    for thread in pair:
        thread.start()
    for thread in pair:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in pair), "an upload did not return"
    assert {a["run_id"] for a in answers} == {run_id_for("input/hot.csv", _sha(b)) for b in bodies}
    # and through `mrbatch put`, the same key from files, one after another
    files = []
    for i in range(3):
        path = ws.root / f"hot-{i}.csv"
        path.write_bytes(version(20 + i))
        files.append(path)
    for path in files:
        result = mrbatch(ws, "put", str(path), "--key", "input/hot.csv", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["run_id"]
    every = bodies + [p.read_bytes() for p in files]
    all_terminal(ws, every, "input/hot.csv")
    check_versions(ws, "input/hot.csv", every, shown=every[-1])
    verify_final(ws)


# --------------------------------------------------------------------------- partition


@pytest.mark.parametrize(
    ("first", "crash"),
    [("standby", "active"), ("standby", "standby"), ("active", "active"), ("active", "standby")],
)
def test_conflicting_uploads_across_a_partition(tmp_path: Path, first: str, crash: str) -> None:
    """Partitioned: one version of a key accepted by the standby, another by the active
    region, a file only the standby has; a region crashes meanwhile. Healed: every version
    completes once, and output/<p> shows the version accepted last."""
    ws = make_workspace(tmp_path / "ws", chunk_rows=300)
    with Deployment(ws):
        active, standby = ws.regions
        role = {"active": active, "standby": standby}
        faults = FaultPoints(ws.faults_path)
        cut = faults.arm("partition", region=active, peer=standby, note="test partition")
        ordered = [first, "standby" if first == "active" else "active"]
        same = {name: version(120 + 50 * i) for i, name in enumerate(ordered)}
        for name in ordered:
            path = ws.root / f"same-{name}.csv"
            path.write_bytes(same[name])
            put = mrbatch(ws, "put", str(path), "--key", "input/same.csv", "--region", role[name])
            assert put.returncode == 0, put.stderr
            time.sleep(0.05)  # distinct acceptance times, in this order
        only = version(77)
        (ws.root / "only-standby.csv").write_bytes(only)
        put = mrbatch(ws, "put", str(ws.root / "only-standby.csv"), "--region", standby)
        assert put.returncode == 0, put.stderr
        # The active region's own version completes while the partition holds.
        runs = eventually(
            lambda: [r for r in runs_of(ws, "input/same.csv") if r.status.terminal],
            60,
            "the active region's version to complete",
        )
        assert [r.input_sha256 for r in runs] == [_sha(same["active"])]
        victim = supervisor.Proc("region", role[crash])
        assert supervisor.kill(ws, victim) is not None
        time.sleep(0.5)
        supervisor.start(ws, only=[victim])
        faults.disarm(cut.id)
        all_terminal(ws, list(same.values()), "input/same.csv")
        all_terminal(ws, [only], "input/only-standby.csv")
        check_versions(ws, "input/same.csv", [same[n] for n in ordered], shown=same[ordered[-1]])
        data = verify_final(ws)
        assert data["counts"]["ok"] + data["counts"]["recovered"] == 3
