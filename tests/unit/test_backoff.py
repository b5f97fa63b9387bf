"""River's retry policy."""

from __future__ import annotations

import random

import pytest

from worker.backoff import MAX_DELAY_SECONDS, retry_delay


@pytest.mark.parametrize(("attempt", "base"), [(1, 1), (2, 16), (3, 81), (4, 256), (5, 625)])
def test_attempt_to_the_fourth_within_ten_percent(attempt: int, base: float) -> None:
    rng = random.Random(7)
    delays = [retry_delay(attempt, rng) for _ in range(200)]
    assert all(0.9 * base <= d <= 1.1 * base for d in delays)
    assert max(delays) - min(delays) > 0.05 * base  # jitter spreads retries


def test_capped_at_a_day() -> None:
    assert retry_delay(1000, random.Random(1)) <= MAX_DELAY_SECONDS


def test_attempt_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retry_delay(0)
