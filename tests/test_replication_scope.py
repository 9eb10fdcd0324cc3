"""What the built-in replicators copy: everything but the chunk outputs, whose bytes only the
region running the chunk reads (a third of what a run writes); their deletions are copied, so
collecting a run removes what another region wrote for it before a takeover."""

from __future__ import annotations

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.model.keys import chunk_output_key, chunk_rejected_key, is_chunk_intermediate
from mrbatch.runtime.replication import Replicator, backlog


def test_chunk_outputs_stay_where_they_ran_and_the_rest_is_copied(workspace: Workspace) -> None:
    source, dest = workspace.regions
    src = backends.open_object_store(workspace, source)
    before = backlog(workspace, source, dest).objects  # what the workspace was made with
    copied = {
        "runs/r1/output.csv": b"merged\n",
        "runs/r1/rejected.csv": b"line,reason\n",
        "runs/r1/api/00000.json": b"{}",  # the enrichment API's answers: a redo needs them
        "versions/r1/output/a.csv": b"merged\n",
    }
    kept_here = {chunk_output_key("r1", 0): b"part 0\n", chunk_rejected_key("r1", 0): b"1,x\n"}
    for key, data in {**copied, **kept_here}.items():
        src.put(key, data, epoch=1)
    assert backlog(workspace, source, dest).objects == before + len(copied)  # no chunk output

    Replicator(workspace, dest).run_once()

    dst = backends.open_object_store(workspace, dest)
    assert {key: dst.get(key) for key in copied} == copied
    assert [i.key for i in dst.list("runs/r1/") if i.key in kept_here] == []
    assert backlog(workspace, source, dest).total == 0


def test_a_chunk_outputs_deletion_is_copied(workspace: Workspace) -> None:
    now_active, former = workspace.regions
    key = chunk_output_key("r2", 3)
    # The former active region ran chunk 3 under epoch 1; after the takeover the active region
    # ran it again under epoch 2, then collected the finished run.
    backends.open_object_store(workspace, former).put(key, b"epoch 1's\n", epoch=1)
    active = backends.open_object_store(workspace, now_active)
    active.put(key, b"epoch 2's\n", epoch=2)
    replicator = Replicator(workspace, former)
    replicator.run_once()
    held = backends.open_object_store(workspace, former)
    assert held.get(key) == b"epoch 1's\n"  # the write was not copied
    assert active.delete(key)
    replicator.run_once()
    assert held.head(key) is None  # its deletion was


def test_which_keys_are_chunk_outputs() -> None:
    assert is_chunk_intermediate(chunk_output_key("r", 0))
    assert is_chunk_intermediate(chunk_rejected_key("r", 12))
    for key in (
        "runs/r/output.csv",
        "runs/r/rejected.csv",
        "runs/r/api/00000.json",
        "runs/out/x.csv",  # a run id "out" with a file directly under it
        "output/runs/r/out/00000.csv",
        "versions/r/rejected/a.csv",
        "input/runs/r/out/0.csv",
    ):
        assert not is_chunk_intermediate(key), key
