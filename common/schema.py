"""The one line for a database without this project's schema (or with an older one)."""

from __future__ import annotations

NOT_DEPLOYED = (
    "schema not deployed: run sqitch deploy "
    '(README: "Running it yourself"; in a container, "Running in a container")'
)

# undefined_table, undefined_function, invalid_schema_name: what a query into a schema
# that was never deployed (or lacks this version's objects) gets.
_MISSING = frozenset({"42P01", "42883", "3F000"})


def is_missing(exc: BaseException) -> bool:
    """True when a PostgreSQL error says the schema's objects are not there."""
    return getattr(exc, "sqlstate", None) in _MISSING
