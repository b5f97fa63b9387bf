"""River's retry policy."""

from __future__ import annotations

import random

import pytest

from worker.backoff import MAX_DELAY_SECONDS, retry_delay


@pytest.mark.parametrize(("errors", "base"), [(1, 1), (2, 16), (3, 81), (4, 256), (5, 625)])
def test_errors_to_the_fourth_within_ten_percent(errors: int, base: float) -> None:
    rng = random.Random(7)
    delays = [retry_delay(errors, rng) for _ in range(200)]
    assert all(0.9 * base <= d <= 1.1 * base for d in delays)
    assert max(delays) - min(delays) > 0.05 * base  # jitter spreads retries


def test_not_capped_at_a_day_as_river_is_not() -> None:
    # River's 25th attempt waits 25^4 s, about 4.5 days.
    assert retry_delay(25, random.Random(1)) >= 0.9 * 25**4 > 4 * 86400


def test_bounded_only_where_gos_duration_would_overflow() -> None:
    assert pytest.approx(292 * 365.25 * 86400, rel=0.01) == MAX_DELAY_SECONDS
    assert retry_delay(309, random.Random(1)) < MAX_DELAY_SECONDS
    # From there on, no jitter: every retry is the bound itself.
    assert {retry_delay(n, random.Random(n)) for n in (310, 1000)} == {MAX_DELAY_SECONDS}


def test_error_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retry_delay(0)
