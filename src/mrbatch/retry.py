"""One backoff rule for every loop that retries: the region's loop, chunk and run retries, the
mail, replication, the metrics sampler, the load generator's uploads.

``Backoff(base, cap)`` gives the pause before retry ``n`` (1 for the first): ``base * factor **
(n - 1)``, capped at ``cap``, times a jitter factor drawn uniformly from ``[1 - jitter, 1 +
jitter]`` so that many retriers do not wake in step. The randomness is injectable (``rng``, a
``random.Random``; ``jitter=0`` for none), and ``next_at`` takes the caller's clock reading, so
tests that drive a loop by hand get exact, repeatable pauses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]

_MAX_EXPONENT = 30  # 2**30 * any sane base is far past every cap


@dataclass(frozen=True)
class Backoff:
    base: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"not a backoff: {self!r}")

    def delay(self, attempt: int) -> float:
        """The pause before retry ``attempt`` (1 for the first retry; 0 or less: no pause)."""
        if attempt <= 0:
            return 0.0
        raw = min(self.cap, self.base * self.factor ** min(attempt - 1, _MAX_EXPONENT))
        if not self.jitter:
            return raw
        return raw * self.rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)

    def next_at(self, attempt: int, now: float) -> float:
        """When retry ``attempt`` is due, on the caller's clock."""
        return now + self.delay(attempt)
