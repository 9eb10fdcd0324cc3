"""The one backoff every retry loop uses: growing, capped, jittered within its bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrbatch.retry import Backoff


def test_without_jitter_it_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=1.0, jitter=0)
    assert [backoff.delay(n) for n in range(0, 7)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.next_at(2, now=100.0) == 100.2


@given(attempt=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_jitter_stays_within_its_share_of_the_capped_delay(attempt: int, seed: int) -> None:
    plain = Backoff(base=0.05, cap=5.0, jitter=0).delay(attempt)
    jittered = Backoff(base=0.05, cap=5.0, rng=random.Random(seed)).delay(attempt)
    assert plain * 0.5 <= jittered <= plain * 1.5


def test_a_seeded_backoff_repeats_itself() -> None:
    def delays(seed: int) -> list[float]:
        backoff = Backoff(base=0.1, cap=10.0, rng=random.Random(seed))
        return [backoff.delay(n) for n in range(1, 8)]

    assert delays(7) == delays(7) != delays(8)


@pytest.mark.parametrize("bad", [{"base": -1.0}, {"cap": -1.0}, {"factor": 0.5}, {"jitter": 1.5}])
def test_nonsense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="not a backoff"):
        Backoff(**{"base": 0.1, "cap": 1.0, **bad})  # type: ignore[arg-type]
