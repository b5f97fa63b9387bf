"""River's default retry policy (DefaultClientRetryPolicy): n⁴ seconds ±10 % jitter,
where n is the number of errors the job has so far plus one."""

from __future__ import annotations

import random

# River bounds the wait only where n⁴ seconds would overflow Go's time.Duration
# (2⁶³ - 1 ns, about 292 years, reached at n = 310); there it also stops adding
# jitter. Nothing caps it at a day: with max_attempts 25 the last wait is 4 days.
MAX_DELAY_SECONDS = (2**63 - 1) / 1e9


def retry_delay(error_count: int, rng: random.Random | None = None) -> float:
    """Seconds until the next attempt of a job that has `error_count` errors,
    the failure being scheduled included (River: len(errors) + 1 before appending).

    For a job whose every attempt errored, that is its attempt number."""
    if error_count < 1:
        raise ValueError(f"error_count must be at least 1, got {error_count}")
    base = min(float(error_count) ** 4, MAX_DELAY_SECONDS)
    if base == MAX_DELAY_SECONDS:
        return base
    jitter = (rng or random).uniform(-0.1, 0.1) * base
    return min(base + jitter, MAX_DELAY_SECONDS)
