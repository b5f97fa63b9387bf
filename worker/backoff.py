"""River's default retry policy: attempt⁴ seconds, with ±10 % jitter."""

from __future__ import annotations

import random

# River caps the wait so that attempt⁴ cannot overflow into absurd delays.
MAX_DELAY_SECONDS = 24 * 3600.0


def retry_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, got {attempt}")
    base = min(float(attempt) ** 4, MAX_DELAY_SECONDS)
    jitter = (rng or random).uniform(-0.1, 0.1) * base
    return min(base + jitter, MAX_DELAY_SECONDS)
