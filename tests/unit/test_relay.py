"""common.relay: CMD's output reaches our stdout through a pipe of the running user's own,
so supervisord can reopen /dev/stdout even when the inherited stdout is someone else's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELAY = [sys.executable, "-m", "common.relay"]


def test_output_and_exit_status_pass_through() -> None:
    done = subprocess.run(
        [*RELAY, "sh", "-c", "echo out; echo err >&2; exit 3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\nerr\n", "")


def test_a_missing_command_is_one_line_and_127() -> None:
    done = subprocess.run(
        [*RELAY, "no-such-command-h12b"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 127
    assert done.stderr == "relay: cannot run no-such-command-h12b: No such file or directory\n"


def test_sigterm_goes_to_the_command_whose_status_is_ours() -> None:
    script = 'trap "echo stopping; exit 0" TERM; echo ready; while :; do sleep 0.1; done'
    with subprocess.Popen(
        [*RELAY, "sh", "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as relay:
        assert relay.stdout is not None
        assert relay.stdout.readline() == "ready\n"
        relay.send_signal(signal.SIGTERM)
        assert relay.stdout.read() == "stopping\n"
        assert relay.wait(timeout=30) == 0


@pytest.fixture
def readable_copy() -> Iterator[Path]:
    """common/relay.py where any user can run it (tmp_path is root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="pw-relay-"))
    try:
        (top / "common").mkdir()
        (top / "common" / "__init__.py").touch()
        shutil.copy(ROOT / "common" / "relay.py", top / "common" / "relay.py")
        for path in (top, top / "common", *(top / "common").iterdir()):
            path.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to switch users"
)
def test_another_user_can_reopen_dev_stdout_only_through_the_relay(readable_copy: Path) -> None:
    # Our stdout pipe is root's, as a container runtime's is while the image runs as app.
    write = "echo written > /dev/stdout"
    as_nobody = ["runuser", "-u", "nobody", "--"]
    direct = subprocess.run(
        [*as_nobody, "sh", "-c", write], capture_output=True, text=True, timeout=30, check=False
    )
    assert direct.returncode != 0
    assert "Permission denied" in direct.stderr
    relayed = subprocess.run(
        [*as_nobody, "/usr/bin/env", "python3", "-m", "common.relay", "sh", "-c", write],
        cwd=readable_copy,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (relayed.returncode, relayed.stdout, relayed.stderr) == (0, "written\n", "")
