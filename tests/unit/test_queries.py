"""The named-query registry."""

from __future__ import annotations

import pytest

from common import sqlfiles
from worker import queries


def test_parse_splits_named_blocks_and_keeps_their_comments() -> None:
    text = "-- header\n\n-- name: a\n-- why\nSELECT 1\n\n-- name: b\nSELECT 2\n"
    assert sqlfiles.parse(text) == {"a": "-- why\nSELECT 1", "b": "SELECT 2"}


def test_duplicate_and_empty_names_are_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        sqlfiles.parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")
    with pytest.raises(ValueError, match="'b' is empty"):
        sqlfiles.parse("-- name: a\nSELECT 1\n-- name: b\n\n")


def test_every_query_the_store_runs_is_registered() -> None:
    names = set(queries.QUERIES)
    assert {
        "job_get_available",
        "job_set_completed_if_running",
        "job_set_retryable_if_running",
        "job_set_discarded_if_running",
        "job_schedule_due",
        "config_get",
        "payment_get",
        "payment_set_intent",
        "payment_set_failed",
    } <= names


def test_every_state_change_from_running_is_guarded() -> None:
    for name, query in queries.QUERIES.items():
        if name.startswith("job_set_") and name.endswith("_if_running"):
            assert "state = 'running'" in query, name
