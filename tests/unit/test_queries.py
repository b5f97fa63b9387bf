"""The named-query registry."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_the_store_runs_exactly_the_registered_queries() -> None:
    """Read from worker/store.py itself, so a query added to either side is checked."""
    source = (Path(__file__).resolve().parents[2] / "worker" / "store.py").read_text()
    used = set(re.findall(r'Q\["([a-z_]+)"\]', source))
    assert len(used) > 10
    assert used - set(queries.QUERIES) == set(), "run by the store but not registered"
    assert set(queries.QUERIES) - used == set(), "registered but never run"


def test_the_worker_touches_no_table_only_its_functions() -> None:
    """payment_worker has no table privileges: a query naming a table could only fail."""
    for name, query in queries.QUERIES.items():
        assert "metadata." not in query.replace("metadata.river_insert", ""), name
        assert "payments.transactions" not in query, name
        assert "payments.config " not in query, name


def test_every_outcome_presents_the_lease() -> None:
    for name, query in queries.QUERIES.items():
        held = ("job_set_", "job_operation_", "job_refund_")
        if name.startswith(held) or name in ("job_payment_get", "job_complete_with_intent"):
            assert "%(attempt)s, %(lease)s" in query, name
