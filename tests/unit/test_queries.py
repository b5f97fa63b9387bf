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
        "config_get",
        "job_get_available",
        "job_set_completed_if_running",
        "job_set_retryable_if_running",
        "job_set_discarded_if_running",
        "job_schedule_due",
        "job_rescue_orphaned",
        "job_clean_finalized",
        "job_payment_get",
        "job_complete_with_intent",
        "leader_elect",
        "leader_resign",
    } <= names


def test_the_worker_touches_no_table_only_its_functions() -> None:
    """payment_worker has no table privileges: a query naming a table could only fail."""
    for name, query in queries.QUERIES.items():
        assert "metadata." not in query.replace("metadata.river_insert", ""), name
        assert "payments.transactions" not in query, name
        assert "payments.config " not in query, name


def test_every_outcome_presents_the_lease() -> None:
    for name, query in queries.QUERIES.items():
        if name.startswith("job_set_") or name in ("job_payment_get", "job_complete_with_intent"):
            assert "%(attempt)s, %(lease)s" in query, name
