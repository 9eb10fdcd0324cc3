"""What ``mrbatch verify`` reports: one verdict per accepted input version, the violations found
(each naming key, region, problem, kind and check) and the report that holds them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..model.records import RunStatus

__all__ = ["CLASSES", "DIVERGED", "DUPLICATED", "LOST", "Verdict", "VerifyReport", "Violation"]

CLASSES = ("ok", "lost", "duplicated", "recovered", "pending")
LOST, DUPLICATED, DIVERGED = "lost", "duplicated", "diverged"
RANK = {"lost": 4, "duplicated": 3, "pending": 2, "recovered": 1, "ok": 0}
MAX_DIVERGED = 200  # listed one by one; beyond that, one summary violation per region


@dataclass(frozen=True)
class Violation:
    """One broken invariant. ``kind`` is lost, duplicated or diverged; ``check`` names the
    check that found it (run, output, conservation, order, mail, fencing, convergence)."""

    key: str
    region: str
    problem: str
    kind: str
    check: str

    def to_dict(self) -> dict[str, str]:
        return {
            "key": self.key,
            "region": self.region,
            "problem": self.problem,
            "kind": self.kind,
            "check": self.check,
        }


@dataclass
class Verdict:
    key: str
    sha256: str
    run_id: str
    outcome: str = "ok"
    status: str | None = None
    region: str | None = None
    rows: dict[str, int | None] = field(default_factory=dict)
    order_checked: bool = False
    notes: list[str] = field(default_factory=list)

    def demote(self, outcome: str) -> None:
        if RANK[outcome] > RANK[self.outcome]:
            self.outcome = outcome

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class VerifyReport:
    violations: list[Violation]
    inputs: list[Verdict]
    notes: list[str]
    epochs: dict[int, str]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(v.outcome for v in self.inputs)
        return {name: counted.get(name, 0) for name in CLASSES}

    @property
    def failed(self) -> int:
        return sum(v.status == str(RunStatus.FAILED) for v in self.inputs)

    @property
    def diverged(self) -> int:
        return sum(v.kind == DIVERGED for v in self.violations)

    def to_dict(self) -> dict[str, Any]:
        """The ``mrbatch verify --json`` contract (ok, counts, violations) plus details."""
        return {
            "ok": self.ok,
            "counts": self.counts,
            "violations": [v.to_dict() for v in self.violations],
            "failed": self.failed,
            "diverged": self.diverged,
            "inputs": [v.to_dict() for v in self.inputs],
            "epochs": {str(k): v for k, v in sorted(self.epochs.items())},
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }
