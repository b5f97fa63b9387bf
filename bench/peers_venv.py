"""bench/.venv-peers: the peers (procrastinate, pgqueuer) and py-spy, pinned in
bench/requirements-peers.txt, kept out of the project's .venv and requirements.txt.
Created with pip on first use and again only when that file changes."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import BENCH_DIR

VENV = BENCH_DIR / ".venv-peers"
REQUIREMENTS = BENCH_DIR / "requirements-peers.txt"
STAMP = VENV / ".requirements.sha256"
PYTHON = VENV / "bin" / "python"


def ensure() -> Path:
    """The peers' python, installing the venv if it is missing or stale."""
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return PYTHON
    print(f"bench: installing {REQUIREMENTS.name} into {VENV.relative_to(BENCH_DIR.parent)}")
    shutil.rmtree(VENV, ignore_errors=True)
    # The venv of the interpreter running us (the project's .venv) is based on the
    # project's Python; `--without-pip` + ensurepip would also do, pip is simpler.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    pip = subprocess.run(
        [
            str(PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if pip.returncode != 0:
        raise RuntimeError(f"pip install -r {REQUIREMENTS} failed:\n{pip.stdout}{pip.stderr}")
    STAMP.write_text(wanted + "\n")
    return PYTHON


def py_spy() -> Path:
    return ensure().parent / "py-spy"
