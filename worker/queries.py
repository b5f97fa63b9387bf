"""The worker's named queries, from worker/sql/*.sql."""

from __future__ import annotations

from common import sqlfiles

QUERIES = sqlfiles.load("worker.sql")
