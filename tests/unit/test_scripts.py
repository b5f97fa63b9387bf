"""Pieces of scripts/ that need no database: the DATABASE_URL normaliser (checked against
libpq's own parser) and the .tools skip list."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[2]


def normalised(value: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["python3", str(ROOT / "scripts" / "conninfo.py")],
        env={"PATH": os.environ["PATH"], "DATABASE_URL": value},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "conninfo",
    [
        "host=127.0.0.1 port=5432 dbname=payment_worker user=postgres",
        "host = db.internal dbname=pw user=app password='p@ss w/o\\'rd' sslmode=require",
        "dbname='my db' host=/var/run/postgresql",
        "host=::1 port=5433 dbname=x",
        "host=a,b port=5432,5433 dbname=x target_session_attrs=read-write",
        "postgresql://app:p%40ss@db:5432/pw?sslmode=require",
    ],
)
def test_a_keyword_string_becomes_the_url_libpq_reads_the_same(conninfo: str) -> None:
    done = normalised(conninfo)
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith("postgresql://")
    assert conninfo_to_dict(url) == conninfo_to_dict(conninfo)


@pytest.mark.parametrize("bad", ["", "not a conninfo", "host='unterminated", "=x"])
def test_neither_url_nor_keywords_is_one_line_naming_no_value(bad: str) -> None:
    done = normalised(bad)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "DATABASE_URL is neither a postgresql://" in line
    assert not bad or bad not in line


def test_the_skip_list_matches_a_name_at_a_line_end() -> None:
    script = (
        f". {ROOT}/scripts/lib.sh; for p in debconf-2.0 perl-base postgresql-common libllvm15"
        ' sqitch; do tools_skipped "$p" && echo "skip $p" || echo "keep $p"; done'
    )
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split("\n")[:-1] == [
        "skip debconf-2.0",
        "skip perl-base",
        "skip postgresql-common",
        "skip libllvm15",
        "keep sqitch",
    ]


def test_a_root_install_is_announced_before_apt_get_runs(tmp_path: Path) -> None:
    """What `make` says as root before it changes the machine: one line naming the packages
    and how to avoid it, before apt-get update and install run (a stand-in apt-get here)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    out = tmp_path / "out"
    (fake / "apt-get").write_text(f'#!/bin/sh\necho "(apt-get $1 ran)" >>{out}\n')
    (fake / "apt-get").chmod(0o755)
    script = (
        f". {ROOT}/scripts/lib.sh; RUN_DIR={tmp_path}/run; is_root() {{ return 0; }};"
        f" apt_install sqitch libdbd-pg-perl 2>>{out}"
    )
    subprocess.run(
        ["bash", "-c", script],
        env={"PATH": f"{fake}:{os.environ['PATH']}"},
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert out.read_text().splitlines() == [
        "bash: installing system packages (apt-get, as root): sqitch libdbd-pg-perl"
        " (PW_INSTALL=tools unpacks them into .tools/ instead)",
        "bash: apt-get update",
        "(apt-get update ran)",
        "(apt-get install ran)",
    ]


def test_a_wrapped_tool_finds_the_other_unpacked_tools_by_name(tmp_path: Path) -> None:
    """An ordinary user's `.tools/bin/sqitch` runs `psql` by name: the wrapper's environment
    puts .tools/bin first on PATH, so the unpacked psql is found without a system one."""
    tools = tmp_path / ".tools"
    (tools / "root" / "usr" / "bin").mkdir(parents=True)
    (tools / "root" / "usr" / "bin" / "sqitch").write_text("#!/bin/sh\nexec psql --version\n")
    (tools / "root" / "usr" / "bin" / "sqitch").chmod(0o755)
    script = (
        f". {ROOT}/scripts/lib.sh; TOOLS={tools} TOOLS_ROOT={tools}/root;"
        " tools_write_env; tools_wrap sqitch usr/bin/sqitch;"
        f" printf '#!/bin/sh\\necho unpacked psql\\n' >{tools}/bin/psql; chmod +x {tools}/bin/psql"
    )
    subprocess.run(["bash", "-c", script], capture_output=True, timeout=30, check=True)
    done = subprocess.run(
        [str(tools / "bin" / "sqitch")],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout == "unpacked psql\n"
