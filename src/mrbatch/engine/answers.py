"""A run's enrichment-API answers, shared by its chunks: one state record per key.

A chunk asks the run's records before the API, and records what the API told it with a
create-only insert: when two chunks asked for one key at once, the second insert conflicts and
that chunk takes the first answer instead of its own. Every chunk of a run thus joins a key to
the same answer, and the API is asked once per key per run (twice at most, in a race). The
records replicate like every other, and are deleted with the run's (``mrbatch gc``).
"""

from __future__ import annotations

from ..errors import ConflictError
from ..model.records import ANSWER, answer_pk
from ..pipeline.http_enrich import Answer
from ..ports import StateTable

__all__ = ["RunAnswers"]


class RunAnswers:
    def __init__(self, table: StateTable, run_id: str, *, epoch: int) -> None:
        self.table, self.run_id, self.epoch = table, run_id, epoch

    def known(self, keys: list[str]) -> dict[str, Answer]:
        found: dict[str, Answer] = {}
        for key in keys:
            record = self.table.get(answer_pk(self.run_id, key))
            if record is not None:
                found[key] = record.body["answer"]
        return found

    def settle(self, fetched: dict[str, Answer]) -> dict[str, Answer]:
        settled: dict[str, Answer] = {}
        for key, answer in fetched.items():
            pk = answer_pk(self.run_id, key)
            body = {"run_id": self.run_id, "key": key, "answer": answer}
            try:
                self.table.insert(pk, ANSWER, body, epoch=self.epoch)
                settled[key] = answer
            except ConflictError:
                first = self.table.get(pk)
                settled[key] = first.body["answer"] if first is not None else answer
        return settled
