#!/usr/bin/env python3
"""deploy-schema: deploys schema/ (the sqitch project) into DATABASE_URL.

    docker run --rm -e DATABASE_URL=postgresql://admin@db.example:5432/payment_worker \
        payment-worker deploy-schema [--set currency=EUR]

What the image runs before its first start, and after an upgrade (sqitch deploys only
what is new). DATABASE_URL is a libpq URL or key=value string of a login that may
create schemas and roles there (the database's owner with CREATEROLE, or a superuser):
not the workers' own. Extra arguments go to `sqitch deploy`. The password reaches
sqitch as SQITCH_PASSWORD, never on its command line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg.conninfo  # the image's venv (and the checkout's) has it

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"
LOOPBACK = ("localhost", "127.0.0.1", "::1")
# Where sqitch records who deployed: the image's user has no name of its own.
IDENTITY = {
    "SQITCH_FULLNAME": "payment-worker deploy-schema",
    "SQITCH_EMAIL": "deploy-schema@payment-worker.invalid",
}


class Refused(ValueError):
    """DATABASE_URL cannot be deployed to; the message never quotes it."""


def parse(conninfo: str) -> dict[str, str]:
    """The connection's parameters, from a URL or a key=value string (libpq's rules)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        raise Refused(
            "DATABASE_URL is not a libpq URL or key=value string "
            "(URL-encode the password, e.g. @ as %40)"
        ) from None
    return {k: str(v) for k, v in params.items() if v is not None and str(v) != ""}


def sqitch_target(params: Mapping[str, str]) -> tuple[str, str]:
    """(sqitch's db:pg: target without the password, the password)."""
    rest = dict(params)
    password = rest.pop("password", "")
    user, dbname = rest.pop("user", ""), rest.pop("dbname", "")
    if not dbname:
        raise Refused("DATABASE_URL names no database: add /dbname (or dbname=...)")
    host, port = rest.pop("host", ""), rest.pop("port", "")
    if "," in host:
        raise Refused("DATABASE_URL names several hosts: deploy to the primary's alone")
    if host.startswith("/"):  # a socket directory: a query parameter, as libpq reads it
        rest["host"], host = host, ""
    netloc = (quote(user, safe="") + "@" if user else "") + (f"[{host}]" if ":" in host else host)
    if port:
        netloc += f":{port}"
    query = f"?{urlencode(sorted(rest.items()))}" if rest else ""
    return f"db:pg://{netloc}/{quote(dbname, safe='')}{query}", password


def loopback_hint(params: Mapping[str, str]) -> str | None:
    if params.get("host", "localhost") in LOOPBACK and Path("/.dockerenv").exists():
        return (
            "DATABASE_URL names localhost, which inside a container is the container "
            'itself: name the database server\'s host (README: "Running in a container")'
        )
    return None


def main(argv: list[str]) -> int:
    conninfo = os.environ.get("DATABASE_URL", "").strip()
    if not conninfo:
        print(
            "deploy-schema: DATABASE_URL is required: the database to deploy into, as a "
            "login that may create schemas and roles there",
            file=sys.stderr,
        )
        return 78
    try:
        params = parse(conninfo)
        target, password = sqitch_target(params)
    except Refused as exc:
        print(f"deploy-schema: {exc}", file=sys.stderr)
        return 78
    env = {**IDENTITY, **os.environ}
    env.pop("DATABASE_URL")
    if password:
        env["SQITCH_PASSWORD"] = password
    sqitch = env.get("PW_SQITCH", "sqitch")
    command = [sqitch, "--chdir", str(SCHEMA_DIR), "deploy", *argv, target]
    try:
        status = subprocess.run(command, env=env, check=False).returncode
    except FileNotFoundError:
        print(f"deploy-schema: {sqitch} is not installed (the image has it)", file=sys.stderr)
        return 127
    hint = loopback_hint(params) if status != 0 else None
    if hint:
        print(f"deploy-schema: {hint}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
