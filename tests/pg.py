"""Where the tests' PostgreSQL is (exported by `make test` from .run/pg.env) and sqitch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import psycopg.types.json

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = ROOT / "schema"

HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = int(os.environ.get("PGPORT", "5432"))
USER = os.environ.get("PGUSER", "postgres")
PASSWORD = os.environ.get("PGPASSWORD") or None


def money_as_decimal(conn: psycopg.Connection[Any]) -> None:
    """JSON numbers read on `conn` become Decimal, never float (money compares exactly)."""
    psycopg.types.json.set_json_loads(lambda text: json.loads(text, parse_float=Decimal), conn)


def url(dbname: str, user: str = USER, password: str | None = PASSWORD) -> str:
    """A libpq URL for `dbname` on the test server."""
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    host = HOST if not HOST.startswith("/") else quote(HOST, safe="")
    return f"postgresql://{auth}@{host}:{PORT}/{quote(dbname, safe='')}"


def sqitch_bin() -> str:
    found = os.environ.get("PW_SQITCH") or shutil.which("sqitch")
    if not found:
        raise RuntimeError("sqitch is not installed: run the tests through `make test`")
    return found


def sqitch(
    command: str, dbname: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs `sqitch --chdir schema COMMAND ... db:pg://...` against `dbname`."""
    target = "db:" + url(dbname).replace("postgresql://", "pg://", 1)
    return subprocess.run(
        [sqitch_bin(), "--chdir", str(SCHEMA_DIR), command, *args, target],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        env={**os.environ, "SQITCH_USER_CONFIG": os.devnull, "SQITCH_SYSTEM_CONFIG": os.devnull},
    )


def deploy_schema(**kwargs: object) -> None:
    """pytest-postgresql loader: deploys the sqitch project into the template database."""
    result = sqitch("deploy", str(kwargs["dbname"]), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"sqitch deploy failed:\n{result.stdout}\n{result.stderr}")
