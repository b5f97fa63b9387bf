"""What the stand-in's request log says about each payment: how often it was created,
replayed and searched, whether two of its requests ran at once, and whether the retries the
suite brought forward had been scheduled within River's backoff."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

CREATE = "POST /v1/payment_intents"
SEARCH = "GET /v1/payment_intents/search"
MADE = ("created", "lost")  # outcomes of a request that made an intent

Entry = dict[str, Any]


@dataclass(frozen=True)
class Tally:
    creates: int
    replays: int
    searches: int
    made: int  # create requests that made an intent (answered or not)


def tallies(entries: Iterable[Entry]) -> dict[str, Tally]:
    """Per payment id, from its create and search requests."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in entries:
        if e["payment_id"] is None:
            continue
        c = counts[e["payment_id"]]
        if e["route"] == SEARCH:
            c["searches"] += 1
            continue
        c["creates"] += 1
        c["replays"] += e["outcome"] == "replay"
        c["made"] += e["outcome"] in MADE
    return {
        pid: Tally(c["creates"], c["replays"], c["searches"], c["made"])
        for pid, c in counts.items()
    }


def overlaps(
    entries: Iterable[Entry], excused: Callable[[Entry, Entry], bool] = lambda _a, _b: False
) -> tuple[list[tuple[Entry, Entry]], int]:
    """Pairs of one payment's requests whose intervals overlap (the later started before the
    earlier ended), minus those `excused`; and how many were excused."""
    by_payment: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        if e["payment_id"] is not None:
            by_payment[e["payment_id"]].append(e)
    found: list[tuple[Entry, Entry]] = []
    excused_count = 0
    for requests in by_payment.values():
        requests.sort(key=lambda e: e["started"])
        for i, earlier in enumerate(requests):
            for later in requests[i + 1 :]:
                if later["started"] >= earlier["ended"]:
                    break
                if excused(earlier, later):
                    excused_count += 1
                else:
                    found.append((earlier, later))
    return found, excused_count


def replays_without_origin(entries: Iterable[Entry]) -> list[Entry]:
    """Replays of a key that no earlier request of that key had executed under."""
    seen: set[str] = set()
    orphans = []
    for e in sorted(entries, key=lambda e: e["started"]):
        key = e["idempotency_key"]
        if e["route"] != CREATE or key is None:
            continue
        if e["outcome"] == "replay" and key not in seen:
            orphans.append(e)
        if e["outcome"] in (*MADE, "error"):
            seen.add(key)
    return orphans


def river_backoff_bounds(errors: int, slack: float = 1.0) -> tuple[float, float]:
    """River's wait after the `errors`-th failure: errors⁴ s, ±10 % jitter (plus slack for
    the moments between the error's timestamp and the row's update)."""
    base = float(errors) ** 4
    return base * 0.9 - slack, base * 1.1 + slack


def backoff_outside_river(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Rows {id, was_scheduled_at, errors} whose wait from their last error to the time they
    were scheduled for is outside River's bounds."""
    wrong = []
    for row in rows:
        errors = row["errors"] or []
        if not errors:
            wrong.append(f"job {row['id']} was retryable with no errors[]")
            continue
        failed_at = datetime.fromisoformat(errors[-1]["at"])
        wait = (row["was_scheduled_at"] - failed_at).total_seconds()
        low, high = river_backoff_bounds(len(errors))
        if not low <= wait <= high:
            wrong.append(
                f"job {row['id']}: {wait:.1f} s after error {len(errors)}, "
                f"River's bounds {low:.1f}..{high:.1f} s"
            )
    return wrong
