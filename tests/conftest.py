"""Fixtures shared by every kind of test: a real PostgreSQL with the schema
deployed by real sqitch (once, into a template database that each test clones)
and the Stripe stand-in in a subprocess."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql import factories

from stripe_standin.process import StandinProcess
from tests import pg

pw_server = factories.postgresql_noproc(
    host=pg.HOST,
    port=pg.PORT,
    user=pg.USER,
    password=pg.PASSWORD,
    # Per session: two test runs against one server must not share a template.
    dbname=f"payment_worker_test_{os.getpid()}",
    load=[pg.deploy_schema],
)
pw_database = factories.postgresql("pw_server")


@pytest.fixture(scope="session", autouse=True)
def _drop_orphaned_loopback_logins() -> None:
    """Loopback logins (cluster-wide) of test databases that earlier runs left behind."""
    with psycopg.connect(pg.url("postgres"), autocommit=True) as admin:
        orphans = admin.execute(
            "SELECT rolname FROM pg_roles AS r"
            " WHERE shobj_description(r.oid, 'pg_authid')"
            "       LIKE 'payment-worker loopback login of database %'"
            "   AND NOT EXISTS (SELECT 1 FROM pg_database AS d WHERE shobj_description(r.oid,"
            "       'pg_authid') = 'payment-worker loopback login of database ' || d.datname)"
        ).fetchall()
        for (name,) in orphans:
            # Still granted something in a clone of its database: then it stays.
            with contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def database_url(pw_database: psycopg.Connection) -> str:
    """URL of a fresh database, cloned from the deployed template, for this test alone."""
    return pg.url(pw_database.info.dbname)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database, as the admin user. Money in
    JSON reads back as Decimal, never float, on this connection only: the worker under
    test parses its jobs' args with psycopg's defaults, as in production."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        pg.money_as_decimal(connection)
        yield connection


@pytest.fixture(scope="session")
def standin_process() -> Iterator[StandinProcess]:
    with StandinProcess(quiet=True) as process:
        yield process


@pytest.fixture
def standin(standin_process: StandinProcess) -> StandinProcess:
    """The stand-in, emptied of intents, scripts and faults from earlier tests."""
    standin_process.admin.reset()
    return standin_process
