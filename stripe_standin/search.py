"""The one form of Stripe's search query language the stand-in understands."""

from __future__ import annotations

import re

# metadata['payment_id']:'42' (either quote, as Stripe accepts both)
_METADATA = re.compile(
    r"""^\s*metadata\[(?P<q1>['"])(?P<key>[^'"]+)(?P=q1)\]\s*:\s*"""
    r"""(?P<q2>['"])(?P<value>[^'"]*)(?P=q2)\s*$"""
)


class SearchQueryError(ValueError):
    """A search the stand-in cannot answer; ``param`` names the parameter at fault."""

    def __init__(self, message: str, *, param: str = "query") -> None:
        super().__init__(message)
        self.param = param


def parse_metadata_query(query: str | None) -> tuple[str, str]:
    """``(key, value)`` of a ``metadata['key']:'value'`` query; anything else is refused."""
    if query is None or query.strip() == "":
        raise SearchQueryError("Missing required param: query.")
    match = _METADATA.match(query)
    if match is None:
        raise SearchQueryError(
            f"The stand-in searches only metadata['key']:'value' queries, not {query[:80]!r}."
        )
    return match.group("key"), match.group("value")
