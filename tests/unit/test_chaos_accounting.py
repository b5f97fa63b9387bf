"""The fault suite's accounting catches what it claims to: overlapping requests of one
payment, replays with no origin, retries scheduled outside River's backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.chaos.accounting import (
    CREATE,
    SEARCH,
    Tally,
    backoff_outside_river,
    overlaps,
    replays_without_origin,
    tallies,
)


def entry(
    pid: str, start: float, end: float, outcome: str, key: str | None = "k"
) -> dict[str, Any]:
    route = SEARCH if key is None else CREATE
    return {
        "route": route,
        "idempotency_key": key,
        "payment_id": pid,
        "started": start,
        "ended": end,
        "outcome": outcome,
        "status": 200,
    }


def test_sequential_requests_do_not_overlap_concurrent_ones_do() -> None:
    log = [
        entry("a", 0.0, 1.0, "error"),
        entry("a", 1.0, 2.0, "replay"),  # starts as the first ends: not concurrent
        entry("a", 2.5, 3.0, "ok", key=None),
        entry("b", 0.0, 1.0, "created", key="kb"),
        entry("b", 0.5, 0.7, "error", key="kb"),  # inside b's first: concurrent
    ]
    found, excused = overlaps(log)
    assert [(a["payment_id"], b["started"]) for a, b in found] == [("b", 0.5)]
    assert excused == 0
    found, excused = overlaps(log, excused=lambda earlier, later: True)
    assert (found, excused) == ([], 1)


def test_tallies_count_creates_replays_searches_and_what_made_an_intent() -> None:
    log = [
        entry("a", 0, 1, "lost"),
        entry("a", 1, 2, "replay"),
        entry("a", 2, 3, "ok", key=None),
        entry("a", 3, 4, "dropped", key="k2"),
    ]
    assert tallies(log) == {"a": Tally(creates=3, replays=1, searches=1, made=1)}


def test_a_replay_needs_an_earlier_request_that_executed_under_its_key() -> None:
    good = [entry("a", 0, 1, "error"), entry("a", 1, 2, "replay")]
    assert replays_without_origin(good) == []
    bad = [entry("a", 0, 1, "dropped"), entry("a", 1, 2, "replay")]
    assert replays_without_origin(bad) == [bad[1]]


def test_backoff_outside_river_bounds_is_named() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    errors = [{"at": (at + timedelta(seconds=i)).isoformat()} for i in range(4)]
    last = at + timedelta(seconds=3)
    rows = [
        {"id": 1, "was_scheduled_at": last + timedelta(seconds=256), "errors": errors},
        {"id": 2, "was_scheduled_at": last + timedelta(seconds=240), "errors": errors},
        {"id": 3, "was_scheduled_at": last + timedelta(hours=3), "errors": errors},
        {"id": 4, "was_scheduled_at": last, "errors": []},
    ]
    wrong = backoff_outside_river(rows)
    assert [w.split(":")[0] for w in wrong] == ["job 3", "job 4 was retryable with no errors[]"]
