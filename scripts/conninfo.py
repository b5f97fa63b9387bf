"""Prints $DATABASE_URL as a postgresql:// URL, for the scripts: libpq (and so the worker)
takes a URL or a `key=value ...` string, the scripts' parsing wants a URL. Read from the
environment, never argv, which every user can read. Standard library only: `make db` runs
it with the machine's python3, before any venv exists.

Exit status 2, with one line on stderr naming no value, when it is neither."""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import quote

_KEY = re.compile(r"\s*([A-Za-z_]+)\s*=\s*")


def keywords(text: str) -> dict[str, str]:
    """libpq's `key=value` syntax: values bare or in single quotes, backslash escapes."""
    found: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        key = _KEY.match(text, pos)
        if not key:
            raise ValueError
        pos, value = key.end(), []
        quoted = text[pos : pos + 1] == "'"
        pos += quoted
        while pos < len(text):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text):
                value.append(text[pos + 1])
                pos += 2
                continue
            if (quoted and char == "'") or (not quoted and char.isspace()):
                break
            value.append(char)
            pos += 1
        if quoted:
            if text[pos : pos + 1] != "'":
                raise ValueError
            pos += 1
        elif not value:
            raise ValueError
        found[key.group(1)] = "".join(value)
    if not found:
        raise ValueError
    return found


def to_url(value: str) -> str:
    if re.match(r"postgres(ql)?://", value):
        return value
    params = keywords(value)
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    auth = user + (":" + quote(password, safe="") if password is not None else "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    netloc = ""
    if host and "/" not in host and "," not in host:
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{port}" if port else ""
    else:
        params.update({k: v for k, v in (("host", host), ("port", port)) if v})
    if auth:
        netloc = auth + "@" + netloc
    query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in params.items() if k != "dbname")
    dbname = quote(params.get("dbname", ""), safe="")
    return f"postgresql://{netloc}/{dbname}" + (f"?{query}" if query else "")


def main() -> int:
    try:
        print(to_url(os.environ.get("DATABASE_URL", "").strip()))
    except ValueError:
        print(
            "error: DATABASE_URL is neither a postgresql://user@host:port/dbname URL nor a"
            " key=value connection string (host=... port=... dbname=... user=...)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
