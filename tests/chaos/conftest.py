"""Fixtures of the chaos suite: a private PostgreSQL it may crash, the real supervisord, and
the one-line summaries that must reach CI's log.

supervisord is started through tests/acceptance/conftest.py's `Supervisord`, from the repo
root with the repo's supervisord.conf: its socket lives in the checkout, so this suite and
the acceptance tests must run one after the other (it fails at once if the socket is taken).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.acceptance.conftest import Supervisord, base_env, login_role
from tests.chaos.cluster import PrivateCluster

SUMMARY_LINES = pytest.StashKey[list[str]]()

Record = Callable[[str], None]
StartSupervisord = Callable[[Mapping[str, str]], Supervisord]


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster of this suite alone, crashed and restarted by the tests."""
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def chaos_db(pg_cluster: PrivateCluster, request: pytest.FixtureRequest) -> str:
    """URL of a new database in the private cluster, schema deployed by sqitch."""
    name = "chaos_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    return pg_cluster.create_database(name)


@pytest.fixture
def worker_groups() -> tuple[str, ...]:
    """The groups of the workers' login (override to add, say, an exporter's group)."""
    return ("payment_worker",)


@pytest.fixture
def worker_login(chaos_db: str, worker_groups: tuple[str, ...]) -> Iterator[str]:
    """A LOGIN role in the private cluster that is only a member of `worker_groups`."""
    with login_role(chaos_db, "pw_chaos", worker_groups) as name:
        yield name


@pytest.fixture
def worker_url(pg_cluster: PrivateCluster, chaos_db: str, worker_login: str) -> str:
    """chaos_db as the workers' login: supervisord's DATABASE_URL. The suite's own inserts
    and checks keep chaos_db, the superuser's."""
    return pg_cluster.url(str(conninfo_to_dict(chaos_db)["dbname"]), user=worker_login)


@pytest.fixture
def start_supervisord(
    tmp_path: Path, pg_cluster: PrivateCluster, worker_login: str
) -> Iterator[StartSupervisord]:
    """start_supervisord(env) -> a running Supervisord (env plus base_env()); stopped at
    teardown, before the cluster and the workers' login (its workers must outlive
    neither)."""
    started: list[Supervisord] = []

    def start(env: Mapping[str, str]) -> Supervisord:
        sup = Supervisord({**base_env(), **env}, tmp_path / f"supervisord-{len(started)}.log")
        started.append(sup)
        return sup.start()

    yield start
    for sup in started:
        sup.stop()


@pytest.fixture
def record_summary(request: pytest.FixtureRequest) -> Record:
    """Prints a summary line now (seen with -s) and again in pytest's terminal summary, which
    plain `make test` shows even though it captures a passing test's stdout."""

    def record(line: str) -> None:
        print(line, flush=True)
        request.node.user_properties.append(("chaos_summary", line))
        request.config.stash.setdefault(SUMMARY_LINES, []).append(line)

    return record


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    lines = config.stash.get(SUMMARY_LINES, [])
    if lines:
        terminalreporter.section("chaos summary")
        for line in lines:
            terminalreporter.write_line(line)
