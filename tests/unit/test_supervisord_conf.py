"""supervisord.conf as supervisord itself parses it, with only the required variables set."""

from __future__ import annotations

from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from worker.scaler import GROUP, MAX_WORKERS

CONF = Path(__file__).resolve().parents[2] / "supervisord.conf"


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    for name in ("RIVER_WORKER_COUNT", "PAYMENT_CURRENCY", "DB_MAX_CONNS", "DB_MIN_CONNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@127.0.0.1/db")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_x")
    options = ServerOptions()
    options.configfile = str(CONF)
    options.process_config(do_usage=False)
    return {g.name: g for g in options.process_group_configs}


def test_workers_are_numbered_and_started_by_the_scaler(groups: dict[str, object]) -> None:
    workers = groups[GROUP]
    names = [p.name for p in workers.process_configs]  # type: ignore[attr-defined]
    assert names == [f"worker-{n:02d}" for n in range(MAX_WORKERS)]
    assert all(not p.autostart for p in workers.process_configs)  # type: ignore[attr-defined]
    scaler = groups["worker-scaler"].process_configs[0]  # type: ignore[attr-defined]
    assert scaler.autostart
    assert scaler.command == "python -m worker.scaler"


def test_workers_get_time_to_finish_the_job_in_hand(groups: dict[str, object]) -> None:
    worker = groups[GROUP].process_configs[0]  # type: ignore[attr-defined]
    assert worker.stopsignal == 15
    assert worker.stopwaitsecs > 30  # above STRIPE_READ_TIMEOUT's default
    assert worker.stdout_logfile == "/dev/stdout"
