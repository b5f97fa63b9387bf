"""Validation of a libpq connection string, shared by the worker and the exporter.

Messages never quote the string: it may hold a password."""

from __future__ import annotations

import re

import psycopg.conninfo

_URL_SCHEME = re.compile(r"(?i)^postgres(?:ql)?://")
# What an encoded user:password never holds (RFC 3986 reserves them; libpq would read
# some of them as the end of the userinfo, or keep them and misread what follows).
_MUST_ENCODE = re.compile(r"[@/?#\[\]\s]")
# One entry of a URL's host list: a name or [IPv6 address], then an optional numeric port.
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.%]*\]|[^:@\[\]]*)(?::\d*)?")

URL_ENCODE_HINT = "URL-encode the password (e.g. @ as %40)"


class ConninfoError(ValueError):
    """The connection string is malformed; the message names the variable only."""


def check_conninfo(value: str, name: str = "DATABASE_URL") -> None:
    """Raises ConninfoError unless libpq would read `value` as it was meant."""
    if _URL_SCHEME.match(value) and not _url_userinfo_is_encoded(value):
        raise ConninfoError(
            f"{name} has a user:password part that is not URL-encoded: {URL_ENCODE_HINT}, "
            "and / ? # [ ] and spaces likewise"
        )
    try:
        psycopg.conninfo.conninfo_to_dict(value)
    except psycopg.ProgrammingError:
        # psycopg's message may quote the string, password included.
        hint = (
            f"; if its password has special characters, {URL_ENCODE_HINT}" if "@" in value else ""
        )
        raise ConninfoError(
            f"{name} is not a valid PostgreSQL connection string "
            f"(expected postgresql://user[:password]@host[:port]/dbname){hint}"
        ) from None


def _url_userinfo_is_encoded(url: str) -> bool:
    rest = _URL_SCHEME.sub("", url, count=1)
    # libpq's own reading: the userinfo ends at the first @, if one comes before any /.
    at, slash = rest.find("@"), rest.find("/")
    if at != -1 and (slash == -1 or at < slash):
        if _MUST_ENCODE.search(rest[:at]):
            return False
        rest = rest[at + 1 :]
    # What follows is the host list, up to the path or query. A stray @ there, a port that
    # is not a number, or an @ in the path is the rest of a password cut short by a /.
    hosts = re.split(r"[/?]", rest, maxsplit=1)[0]
    after = rest[len(hosts) :]
    if after.startswith("/") and "@" in after.partition("?")[0]:
        return False
    return all(_HOST_PORT.fullmatch(host) for host in hosts.split(",")) if hosts else True
