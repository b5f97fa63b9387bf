"""Group commit of outcomes (worker/store.py GroupCommit): outcomes that queue while
another is being written share one transaction, and one refused outcome neither
fails nor loses the others."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
import pytest

from tests.integration.rows import QUEUE, job_row, set_queue
from tests.integration.waiting import wait_until
from worker.models import Job
from worker.store import Store


@pytest.fixture
def jobs(conn: psycopg.Connection, store: Store) -> list[Job]:
    set_queue(conn, QUEUE)
    conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, max_attempts)"
        " SELECT %s, 'test_kind', '{}', 5"
        " FROM generate_series(1, 4)",
        (QUEUE,),
    )
    claimed = store.job_get_available(4, "w")
    assert len(claimed) == 4
    return claimed


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def held_up_then_queued(
    database_url: str,
    conn: psycopg.Connection,
    store: Store,
    threads: ThreadPoolExecutor,
    *,
    first: Job,
    then: list[Callable[[], bool]],
) -> tuple[Future[bool], list[Future[bool]]]:
    """Completes `first` while the test holds its row, so that its transaction waits; the
    outcomes of `then` queue behind it; then lets it go. They are written together."""
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT 1 FROM metadata.river_job WHERE id = %s FOR UPDATE", (first.id,))
        head = threads.submit(store.job_complete, first)
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                    " AND query LIKE %s",
                    ("%job_complete%",),
                ).fetchone()
                == (1,)
            ),
            what="the first outcome waiting for the row",
        )
        rest = [threads.submit(f) for f in then]
        wait_until(lambda: store.outcomes.queued == len(then), what="the others queued")
        holder.rollback()
    return head, rest


def test_queued_outcomes_share_one_transaction(
    database_url: str,
    conn: psycopg.Connection,
    store: Store,
    jobs: list[Job],
    threads: ThreadPoolExecutor,
) -> None:
    first, *others = jobs
    head, rest = held_up_then_queued(
        database_url,
        conn,
        store,
        threads,
        first=first,
        then=[lambda j=j: store.job_complete(j) for j in others],
    )
    assert head.result(timeout=10) is True
    assert [f.result(timeout=10) for f in rest] == [True, True, True]
    rows = [job_row(conn, j.id) for j in others]
    assert {r["state"] for r in rows} == {"completed"}
    row = conn.execute(
        "SELECT count(DISTINCT xmin::text) FROM metadata.river_job WHERE id = ANY(%s)",
        ([j.id for j in others],),
    ).fetchone()
    assert row == (1,), "the three in one transaction"


def test_one_refused_outcome_fails_alone(
    database_url: str,
    conn: psycopg.Connection,
    store: Store,
    jobs: list[Job],
    threads: ThreadPoolExecutor,
) -> None:
    first, ok1, bad, ok2 = jobs
    error = {"at": "2026-01-01T00:00:00+00:00", "attempt": 1, "error": "boom", "trace": "t"}

    def refused() -> bool:
        return store.job_retry(bad, error, float("nan"))

    head, rest = held_up_then_queued(
        database_url,
        conn,
        store,
        threads,
        first=first,
        then=[lambda: store.job_complete(ok1), refused, lambda: store.job_complete(ok2)],
    )
    assert head.result(timeout=10) is True
    assert rest[0].result(timeout=10) is True
    with pytest.raises(psycopg.Error, match="delay_seconds must be"):
        rest[1].result(timeout=10)
    assert rest[2].result(timeout=10) is True
    assert job_row(conn, ok1.id)["state"] == "completed"
    assert job_row(conn, ok2.id)["state"] == "completed"
    assert job_row(conn, bad.id)["state"] == "running", "the refused one changed nothing"
    # The refused job's lease is intact: its attempt can still finish it.
    assert store.job_complete(bad) is True
