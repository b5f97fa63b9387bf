"""supervisord.conf as supervisord itself parses it, with only the required variables set."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from webhooks import server, store
from worker import scaler, service
from worker.scaler import GROUP, MAX_WORKERS

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "supervisord.conf"


@pytest.fixture
def here(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of supervisord.conf as a fresh checkout has it, the scaler's include leading
    nowhere yet: the checkout's own .run/workers.conf holds whatever count ran last."""
    checkout = tmp_path_factory.mktemp("checkout")
    (checkout / "supervisord.conf").write_text(CONF.read_text())
    (checkout / "supervisord.workers.conf").symlink_to(".run/workers.conf")
    (checkout / ".run").mkdir()
    return checkout


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch, here: Path) -> dict[str, object]:
    for name in ("RIVER_WORKER_COUNT", "PAYMENT_CURRENCY", "DB_MAX_CONNS", "DB_MIN_CONNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@127.0.0.1/db")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_x")
    options = ServerOptions()
    options.configfile = str(here / "supervisord.conf")
    options.process_config(do_usage=False)
    return {g.name: g for g in options.process_group_configs}


def test_one_worker_is_declared_and_the_scaler_starts_the_workers(
    groups: dict[str, object], here: Path
) -> None:
    workers = groups[GROUP]
    names = [p.name for p in workers.process_configs]  # type: ignore[attr-defined]
    assert names == ["worker-00"]
    assert all(not p.autostart for p in workers.process_configs)  # type: ignore[attr-defined]
    scaler = groups["worker-scaler"].process_configs[0]  # type: ignore[attr-defined]
    assert scaler.autostart
    assert scaler.command == "python -m worker.scaler"
    assert scaler.environment["WORKERS_CONF"] == str(here / ".run" / "workers.conf")


def test_the_included_link_leads_to_the_file_the_scaler_writes() -> None:
    link = ROOT / "supervisord.workers.conf"
    assert link.is_symlink()
    assert link.readlink() == Path(".run/workers.conf")
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(CONF)
    assert parser.get("include", "files") == "%(here)s/supervisord.workers.conf"


@pytest.mark.parametrize("count", [1, 4, MAX_WORKERS])
def test_the_scalers_file_sets_the_count_and_keeps_every_other_setting(
    groups: dict[str, object], tmp_path: Path, count: int
) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF.read_text())
    (tmp_path / "supervisord.workers.conf").symlink_to(".run/workers.conf")
    (tmp_path / ".run").mkdir()
    scaler.write_include(tmp_path / ".run" / "workers.conf", count)
    options = _options(conf)
    assert options.parse_warnings == []
    [resized] = [g for g in options.process_group_configs if g.name == GROUP]
    names = [p.name for p in resized.process_configs]
    assert names == [f"worker-{n:02d}" for n in range(count)]
    [declared] = groups[GROUP].process_configs  # type: ignore[attr-defined]
    for process in resized.process_configs:
        for setting in ("command", "autostart", "stopwaitsecs", "stopsignal", "stopasgroup"):
            assert getattr(process, setting) == getattr(declared, setting), setting
    assert not (tmp_path / ".run" / "workers.conf.partial").exists()


def test_without_the_scalers_file_supervisord_starts_without_a_warning(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF.read_text())
    (tmp_path / "supervisord.workers.conf").symlink_to(".run/workers.conf")
    (tmp_path / ".run").mkdir()
    options = _options(conf)
    assert options.parse_warnings == []
    assert options.parse_criticals == []


def test_workers_exit_on_their_own_before_supervisord_would_kill_them(
    groups: dict[str, object],
) -> None:
    worker = groups[GROUP].process_configs[0]  # type: ignore[attr-defined]
    assert worker.stopsignal == 15
    # The stop path's own limits add up to less than the watchdog's bound, which leaves
    # supervisord's SIGKILL a margin (the Kubernetes grace period is checked against
    # stopwaitsecs in tests/deploy).
    own = service.STOP_JOBS_SECONDS + service.STOP_CLOSE_SECONDS + service.STOP_CLOSE_SECONDS
    assert own < service.STOP_BOUND_SECONDS
    assert worker.stopwaitsecs >= service.STOP_BOUND_SECONDS + 5
    assert worker.stdout_logfile == "/dev/stdout"


def _options(conf: Path) -> ServerOptions:
    options = ServerOptions()
    options.configfile = str(conf)
    options.process_config(do_usage=False)
    return options


def test_everything_supervisord_writes_is_under_run_beside_the_conf(
    groups: dict[str, object], tmp_path: Path
) -> None:
    # A copy elsewhere: %(here)s is the file's directory, whatever the working directory.
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF.read_text())
    (tmp_path / ".run").mkdir()
    options = _options(conf)
    run_dir = tmp_path / ".run"
    assert Path(options.pidfile).parent == run_dir
    [server] = options.configroot.supervisord.server_configs
    assert Path(server["file"]).parent == run_dir
    assert server["chmod"] == 0o700
    assert (
        Path(options.configroot.supervisord.environment["PROMETHEUS_MULTIPROC_DIR"]).parent
        == run_dir
    )
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(conf)
    serverurl = parser.get("supervisorctl", "serverurl").replace("%(here)s", str(tmp_path))
    assert serverurl == f"unix://{server['file']}"


def test_a_missing_run_dir_is_a_clear_error(groups: dict[str, object], tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF.read_text())
    with pytest.raises(ValueError, match=r"\.run/supervisord\.pid does not exist"):
        _options(conf)


def test_the_webhook_receiver_starts_with_supervisord_and_stops_within_its_bounds(
    groups: dict[str, object],
) -> None:
    [receiver] = groups["webhooks"].process_configs  # type: ignore[attr-defined]
    assert receiver.command == "python -m webhooks"
    assert receiver.autostart
    assert receiver.autorestart is not False
    assert receiver.stopsignal == 15
    # uvicorn's graceful shutdown, then the pool's close, inside supervisord's wait.
    assert receiver.stopwaitsecs >= server.GRACEFUL_SHUTDOWN_SECONDS + store.POOL_CLOSE_SECONDS + 3
    assert receiver.stdout_logfile == "/dev/stdout"
    assert receiver.redirect_stderr
