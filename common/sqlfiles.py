"""Named-query registries: SQL lives in a package's .sql files, one `-- name: x` block per query."""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Splits a .sql file into {name: query}; comments under the name line are kept."""
    parts = _NAME.split(text)
    named: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in named:
            raise ValueError(f"query {name!r} is defined twice")
        query = body.strip()
        if not query:
            raise ValueError(f"query {name!r} is empty")
        named[name] = query
    return named


def load(package: str) -> dict[str, LiteralString]:
    """Every named query in the .sql files of `package`, by name."""
    queries: dict[str, LiteralString] = {}
    for file in sorted(resources.files(package).iterdir(), key=lambda f: f.name):
        if not file.name.endswith(".sql"):
            continue
        for name, query in parse(file.read_text(encoding="utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined in more than one file")
            # Our own files, shipped with the package: trusted SQL text.
            queries[name] = query
    return queries
