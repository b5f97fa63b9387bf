"""Run the stand-in in a subprocess for tests: ``with StandinProcess() as standin: standin.url``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from stripe_standin.client import StandinAdmin
from stripe_standin.config import ENV_PREFIX, SECRET_ENV

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class StandinStartError(RuntimeError):
    """The stand-in exited or did not listen in time; the message ends with its log."""


class StandinProcess:
    """``python -m stripe_standin --port 0 --port-file ...`` as a context manager.

    Inherited ``STANDIN_*`` variables are dropped so a developer's shell cannot change test
    behaviour; pass ``env`` to set variables explicitly. ``webhook_url`` and ``webhook_secret``
    make it deliver signed events to an endpoint (the secret goes to the child as
    ``STANDIN_WEBHOOK_SECRET``, never on its command line); the ``webhook_*`` fault rates and
    retry settings map onto the ``--webhook-*`` flags, and everything can be changed later with
    ``admin.configure_webhooks(...)``. ``authorization_window`` (seconds) and
    ``refunds_pending`` map onto ``--authorization-window`` and ``--refunds-pending``. The log
    (stderr) goes to a file, readable with :meth:`log_text`, so a chatty server never blocks
    on a full pipe.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        latency_ms: int = 0,
        fail_5xx: float = 0.0,
        fail_429: float = 0.0,
        drop: float = 0.0,
        lose_response: float = 0.0,
        create_then_5xx: float = 0.0,
        save_5xx: bool = True,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_retry_base: float | None = None,
        webhook_max_attempts: int | None = None,
        webhook_timeout: float | None = None,
        webhook_duplicate: float = 0.0,
        webhook_drop: float = 0.0,
        webhook_bad_signature: float = 0.0,
        webhook_reorder_max: float = 0.0,
        webhook_enabled: bool = True,
        authorization_window: float | None = None,
        refunds_pending: bool = False,
        seed: int | None = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = False,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        self.host = host
        self.startup_timeout = startup_timeout
        self.env_overrides = dict(env or {})
        if webhook_secret is not None:  # through the environment: never on a command line
            self.env_overrides[SECRET_ENV] = webhook_secret
        self._args = [
            python,
            "-m",
            "stripe_standin",
            "--host",
            host,
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--fail-5xx",
            str(fail_5xx),
            "--fail-429",
            str(fail_429),
            "--drop",
            str(drop),
            "--lose-response",
            str(lose_response),
            "--create-then-5xx",
            str(create_then_5xx),
            "--save-5xx",
            "true" if save_5xx else "false",
        ]
        if api_key is not None:
            self._args += ["--api-key", api_key]
        if webhook_url is not None:
            self._args += ["--webhook-url", webhook_url]
        self._args += [
            "--webhook-duplicate",
            str(webhook_duplicate),
            "--webhook-drop",
            str(webhook_drop),
            "--webhook-bad-signature",
            str(webhook_bad_signature),
            "--webhook-reorder-max",
            str(webhook_reorder_max),
            "--webhook-enabled",
            "true" if webhook_enabled else "false",
        ]
        for flag, value in (
            ("--webhook-retry-base", webhook_retry_base),
            ("--webhook-max-attempts", webhook_max_attempts),
            ("--webhook-timeout", webhook_timeout),
            ("--authorization-window", authorization_window),
        ):
            if value is not None:
                self._args += [flag, str(value)]
        if refunds_pending:
            self._args += ["--refunds-pending", "true"]
        if seed is not None:
            self._args += ["--seed", str(seed)]
        if quiet:
            self._args.append("--quiet")
        self._args += list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._final_log = ""
        self.port: int | None = None
        self.returncode: int | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> StandinProcess:
        """Start the server and wait until it answers ``/_standin/health``."""
        if self._process is not None:
            raise RuntimeError("already started")
        self._workdir = Path(tempfile.mkdtemp(prefix="stripe-standin-"))
        port_file = self._workdir / "port"
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*self._args, "--port-file", str(port_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._child_env(),
            )
        try:
            self._wait_until_listening(port_file)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait (SIGKILL after ``timeout`` seconds); returns the exit status."""
        process = self._process
        if process is not None and self.returncode is None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self.returncode = process.returncode
        if self._workdir is not None:
            self._final_log = self._read_log()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the server to exit by itself (e.g. after a signal); returns its status."""
        if self._process is None:
            raise RuntimeError("not started")
        return self._process.wait(timeout)

    def __enter__(self) -> StandinProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what tests use ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base address for ``StripeClient(base_addresses={"api": url})``."""
        if self.port is None:
            raise RuntimeError("not started")
        return f"http://{self.host}:{self.port}"

    @property
    def admin(self) -> StandinAdmin:
        """Client for the admin endpoints."""
        return StandinAdmin(self.url)

    @property
    def pid(self) -> int | None:
        """Process id of the server, once started."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path:
        """File that receives the server's stderr while it runs."""
        if self._workdir is None:
            raise RuntimeError("not running")
        return self._workdir / "standin.log"

    def log_text(self) -> str:
        """Everything the server logged so far (or in total, after stop)."""
        return self._read_log() if self._workdir is not None else self._final_log

    # --- internals ---------------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(self.env_overrides)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(_PROJECT_ROOT) + (os.pathsep + path if path else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _wait_until_listening(self, port_file: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise StandinStartError(
                    f"stripe_standin exited with status {self._process.returncode}:\n"
                    + self._read_log()
                )
            if self.port is None:
                self.port = _read_port(port_file)
            if self.port is not None and self.admin.health():
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        raise StandinStartError(
            f"stripe_standin did not listen within {self.startup_timeout}s:\n" + self._read_log()
        )

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""


def _read_port(port_file: Path) -> int | None:
    try:
        text = port_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None
