"""The image's deploy-schema (deploy/deploy_schema.py) with real sqitch, on an empty
database: deployed, the password never on sqitch's command line or in its output, and a
second run deploys nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from tests import pg

SCRIPT = pg.ROOT / "deploy" / "deploy_schema.py"
# A trusting test server ignores it; one that checks needs the real one.
PASSWORD = pg.PASSWORD or "deploy-schema-pw-Hq7"


@pytest.fixture
def empty_db() -> Iterator[str]:
    name = f"pw_deploy_{uuid4().hex[:12]}"
    with psycopg.connect(pg.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            admin.execute(
                sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(f"payments_writer_{name}"))
            )


def deploy(dbname: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the script as the image does, through a sqitch that records its argv."""
    wrapper = tmp_path / "sqitch"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >> {tmp_path}/argv\nexec {pg.sqitch_bin()} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        "DATABASE_URL": pg.url(dbname, password=PASSWORD),
        "PW_SQITCH": str(wrapper),
        "SQITCH_USER_CONFIG": os.devnull,
        "SQITCH_SYSTEM_CONFIG": os.devnull,
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_it_deploys_into_an_empty_database_and_keeps_the_password_to_itself(
    empty_db: str, tmp_path: Path
) -> None:
    first = deploy(empty_db, tmp_path, "--set", "currency=EUR")
    assert first.returncode == 0, first.stderr
    assert f"Deploying changes to db:pg://{pg.USER}@" in first.stdout
    with psycopg.connect(pg.url(empty_db), autocommit=True) as conn:
        row = conn.execute("SELECT currency, queue FROM payments.worker_settings()").fetchone()
    assert row == ("EUR", "payments")
    again = deploy(empty_db, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Nothing to deploy (up-to-date)" in again.stdout
    argv = (tmp_path / "argv").read_text()
    assert argv.splitlines()[:3] == ["--chdir", str(pg.SCHEMA_DIR), "deploy"]
    for text in (argv, first.stdout, first.stderr, again.stdout, again.stderr):
        assert PASSWORD not in text
