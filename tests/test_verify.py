"""The invariant checker: clean on a real history, and each kind of damage is found and named.

One deployment processes a few generated files once (module fixture); every test works on a
copy of that finished workspace and damages it the way a bug would (an output with a row lost,
doubled or out of order, a second mail, a publish by the wrong region, a replica that drifted),
then checks that ``verify`` names the input, the region and the problem, and exits 1."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.faults import FaultPoints
from mrbatch.model.keys import run_id_for, version_input_key
from mrbatch.model.records import ACCEPTED, Accepted, FileRun, RunStatus, accepted_pk, run_pk
from mrbatch.observe import views
from mrbatch.proof.loadgen import LoadGenerator, LoadOptions
from mrbatch.proof.verify import VerifyReport, verify
from tests.conftest import Deployment, make_workspace
from tests.helpers import mrbatch

FILES = 3


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace whose deployment processed FILES files to the end, then stopped."""
    ws = make_workspace(tmp_path_factory.mktemp("verify") / "ws", chunk_rows=500)
    dep = Deployment(ws)
    dep.up()
    try:
        load = LoadGenerator(
            ws, LoadOptions(files=FILES, rows=1_500, invalid_fraction=0.05, seed=4, timeout=60)
        )
        report = load.run().to_dict()
        assert report["completed"] == FILES and report["rejections_match"], report
        settled = verify(ws, wait=30)  # replication finishes before the deployment stops
        assert settled.ok and settled.counts["ok"] == FILES, settled.to_dict()
    finally:
        dep.down()
    return ws


@pytest.fixture
def ws(finished: Workspace, tmp_path: Path) -> Workspace:
    shutil.copytree(finished.root, tmp_path / "copy")
    return Workspace.load(tmp_path / "copy" / "mrbatch.toml")


def a_run(ws: Workspace) -> FileRun:
    runs = [r for r in views.all_runs(ws) if r.status is RunStatus.COMPLETED]
    assert len(runs) == FILES
    return runs[0]


def published(ws: Workspace, run: FileRun) -> bytes:
    return backends.open_object_store(ws, ws.regions[0]).get(run.result_key or "")


def republish(ws: Workspace, run: FileRun, data: bytes) -> None:
    """Make ``data`` the run's published output everywhere (output/<p> and the version's own
    result), records included, as a publish with a bug in it would: the checker must find the
    damage in the bytes themselves."""
    home, other = ws.regions
    store = backends.open_object_store(ws, home)
    for key in (run.output_key or "", run.result_key or ""):
        meta = dict(store.head(key).meta)  # type: ignore[union-attr]
        info = store.put(key, data, meta=meta, epoch=run.epoch)
        assert backends.open_object_store(ws, other).apply_replica(info, io.BytesIO(data))
    table = backends.open_state_table(ws, home)
    record = table.get(run_pk(run.run_id))
    assert record is not None
    body = dict(record.body, output_sha256=info.sha256)
    updated = table.update(record.pk, body, expected_version=record.version, epoch=record.epoch)
    assert backends.open_state_table(ws, other).apply_replica(updated)


def problems(report: VerifyReport, check: str) -> list[tuple[str, str, str, str]]:
    return [(v.kind, v.key, v.region, v.problem) for v in report.violations if v.check == check]


# --------------------------------------------------------------------------- clean


def test_a_clean_history_passes_with_the_json_contract(ws: Workspace) -> None:
    result = mrbatch(ws, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert {"ok", "counts", "violations"} <= set(data)
    assert data["ok"] is True and data["violations"] == []
    assert data["counts"] == {"ok": FILES, "lost": 0, "duplicated": 0, "recovered": 0, "pending": 0}
    assert all(item["order_checked"] for item in data["inputs"])  # recounted from the objects
    assert {item["rows"]["rejected"] for item in data["inputs"]} != {0}
    assert data["epochs"] == {"1": ws.regions[0]}


def test_an_unreachable_region_is_a_note_not_a_verdict(ws: Workspace) -> None:
    FaultPoints(ws.faults_path).arm("state", region=ws.regions[1])
    report = verify(ws)
    assert report.ok and report.counts["ok"] == FILES
    assert any(ws.regions[1] in note and "cannot be read" in note for note in report.notes)
    assert any("convergence not checked" in note for note in report.notes)


# --------------------------------------------------------------------------- lost


def test_an_accepted_upload_no_region_has_is_lost(ws: Workspace) -> None:
    # A ledger entry whose bytes went with a lost machine: acknowledged, never processed.
    run_id = run_id_for("input/vanished.csv", "ab" * 32)
    entry = Accepted(
        run_id=run_id,
        key="input/vanished.csv",
        sha256="ab" * 32,
        size=10,
        region=ws.regions[0],
        at=time.time(),
        source="put",
        object_key=version_input_key(run_id, "input/vanished.csv"),
    )
    record = backends.open_state_table(ws, ws.regions[0]).insert(
        accepted_pk(entry.run_id), ACCEPTED, entry.to_body(), epoch=0
    )
    assert backends.open_state_table(ws, ws.regions[1]).apply_replica(record)  # replicated
    result = mrbatch(ws, "verify", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["counts"]["lost"] == 1
    [violation] = data["violations"]
    assert (
        violation["key"] == "input/vanished.csv" and "no region has a run" in violation["problem"]
    )


def test_an_unclaimed_input_is_pending_and_lost_when_final(ws: Workspace) -> None:
    info = backends.open_object_store(ws, ws.regions[1]).put("input/late.csv", b"uuid\n1\n")
    backends.open_object_store(ws, ws.regions[0]).apply_replica(info, io.BytesIO(b"uuid\n1\n"))
    report = verify(ws)
    assert report.ok and report.counts["pending"] == 1
    final = verify(ws, final=True)
    assert not final.ok and final.counts["lost"] == 1
    assert [v.key for v in final.violations] == ["input/late.csv"]


def test_a_published_output_gone_from_every_region_is_lost(ws: Workspace) -> None:
    run = a_run(ws)
    for region in ws.regions:
        store = backends.open_object_store(ws, region)
        store.blob_path(run.output_sha256 or "").unlink()  # type: ignore[attr-defined]
    report = verify(ws)
    assert problems(report, "output") == [
        ("lost", run.input_key, run.region, "COMPLETED, but its published output is in no region")
    ]
    assert report.counts["lost"] == 1


def test_a_dropped_row_is_lost(ws: Workspace) -> None:
    run = a_run(ws)
    lines = published(ws, run).split(b"\n")
    republish(ws, run, b"\n".join(lines[:5] + lines[6:]))
    report = verify(ws)
    found = problems(report, "conservation")
    assert found and all(kind == "lost" and key == run.input_key for kind, key, _, _ in found)
    assert any("but the objects hold" in problem for *_, problem in found)
    assert report.counts["lost"] == 1 and not report.ok


def test_rows_out_of_order_are_found(ws: Workspace) -> None:
    run = a_run(ws)
    lines = published(ws, run).split(b"\n")
    lines[3], lines[4] = lines[4], lines[3]
    republish(ws, run, b"\n".join(lines))
    report = verify(ws)
    assert problems(report, "conservation") == []  # the counts are right...
    [(kind, key, _, problem)] = problems(report, "order")  # ...the order is not
    assert kind == "lost" and key == run.input_key
    assert "is not input record" in problem


# --------------------------------------------------------------------------- duplicated


def test_a_doubled_row_is_duplicated(ws: Workspace) -> None:
    run = a_run(ws)
    lines = published(ws, run).split(b"\n")
    republish(ws, run, b"\n".join([*lines[:4], lines[3], *lines[4:]]))
    report = verify(ws)
    assert report.counts["duplicated"] == 1
    assert any(kind == "duplicated" for kind, *_ in problems(report, "conservation"))


def test_a_second_mail_is_duplicated_and_the_cli_exits_1(ws: Workspace) -> None:
    run = a_run(ws)
    [original] = [
        p for p in ws.outbox_dir.glob("*.eml") if run.run_id in p.read_text(errors="replace")
    ]
    shutil.copy(original, ws.outbox_dir / "resent.eml")
    result = mrbatch(ws, "verify", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["counts"]["duplicated"] == 1
    assert {"key": run.input_key, "region": run.region, "problem": "2 mails for one run"} in [
        {k: v[k] for k in ("key", "region", "problem")} for v in data["violations"]
    ]


def test_a_failure_mail_is_not_a_duplicate_but_one_for_no_known_run_is(ws: Workspace) -> None:
    run = a_run(ws)
    [original] = [
        p for p in ws.outbox_dir.glob("*.eml") if run.run_id in p.read_text(errors="replace")
    ]
    text = original.read_text()

    def mail(message_id: str, name: str) -> None:
        (ws.outbox_dir / name).write_text(
            text.replace(f"Message-ID: <{run.run_id}@mrbatch>", f"Message-ID: {message_id}")
        )

    # The mail of a failure before its redrive (round 0): the run still has one completion
    # mail, and a failure mail is no second one.
    mail(f"<{run.run_id}.failed.0@mrbatch>", "failed-0.eml")
    assert verify(ws).ok
    # A failure mail for a round the run never had, or for a run nobody knows, is.
    mail(f"<{run.run_id}.failed.7@mrbatch>", "failed-7.eml")
    mail("<0123456789abcdef0123.failed.0@mrbatch>", "stranger.eml")
    found = problems(verify(ws), "mail")
    assert sorted(p[1] for p in found) == [
        "<0123456789abcdef0123.failed.0@mrbatch>",
        f"<{run.run_id}.failed.7@mrbatch>",
    ], found
    assert all(p[0] == "duplicated" for p in found)


def test_a_missing_mail_is_lost(ws: Workspace) -> None:
    run = a_run(ws)
    for path in ws.outbox_dir.glob("*.eml"):
        if run.run_id in path.read_text(errors="replace"):
            path.unlink()
    assert problems(verify(ws), "mail") == [
        ("lost", run.input_key, run.region, "COMPLETED but no mail in the outbox")
    ]


def test_a_publish_by_a_region_that_was_not_active_breaks_fencing(ws: Workspace) -> None:
    run = a_run(ws)
    home, other = ws.regions
    data = published(ws, run)
    meta = {"run_id": run.run_id, "input_sha256": run.input_sha256, "by": "a stale writer"}
    # The standby publishes the output again under epoch 1, whose active region was home.
    backends.open_object_store(ws, other).put(run.output_key or "", data, meta=meta, epoch=1)
    report = verify(ws)
    fencing = problems(report, "fencing")
    assert fencing == [
        (
            "duplicated",
            run.output_key,
            other,
            f"written by {other} in epoch 1, whose active region was {home}",
        )
    ]
    assert any(v.kind == "diverged" and v.key == run.output_key for v in report.violations)
    assert not report.ok


# --------------------------------------------------------------------------- diverged


def test_a_replica_that_drifted_is_diverged(ws: Workspace) -> None:
    run = a_run(ws)
    _home, other = ws.regions
    table = backends.open_state_table(ws, other)
    record = table.get(run_pk(run.run_id))
    assert record is not None
    table.update(
        record.pk, dict(record.body, reason="edited"), expected_version=record.version, epoch=1
    )
    report = verify(ws)
    [violation] = report.violations
    assert (violation.kind, violation.key, violation.region) == ("diverged", record.pk, other)
    assert "record differs" in violation.problem
    assert report.counts["ok"] == FILES  # the inputs themselves are fine
