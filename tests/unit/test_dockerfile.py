"""The Dockerfile, read as text (no Docker needed): what it copies exists and reaches the
build context, tini is PID 1, supervisord runs as a non-root user who cannot change the
code, the base image is pinned by digest, and the hashed lock is what gets installed."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INITS = {"tini", "dumb-init"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} must be in exec (JSON) form"
        return [str(v) for v in value]


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continuation lines too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def of(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def copy_sources_and_dest(instruction: Instruction) -> tuple[list[str], str]:
    args = instruction.args
    words = instruction.exec_form() if args.startswith("[") else shlex.split(args)
    words = [w for w in words if not w.startswith("--")]
    return words[:-1], words[-1]


def local_copies(instructions: list[Instruction]) -> list[Instruction]:
    """COPY/ADD from the build context (not --from another stage)."""
    return [
        i
        for i in instructions
        if i.keyword in ("COPY", "ADD") and not re.search(r"(^|\s)--from=", i.args)
    ]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        regex = _glob_regex(glob.strip().strip("/"))
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _glob_regex(glob: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif glob.startswith("**", i):
            out += ".*"
            i += 2
        elif glob[i] == "*":
            out += "[^/]*"
            i += 1
        elif glob[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(glob[i])
            i += 1
    return re.compile(out)


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_base_image_is_python_311_slim_pinned_by_digest(instructions: list[Instruction]) -> None:
    [base] = [i.args for i in of(instructions, "FROM")]
    # A tag moves under a rebuild; a digest names exactly one image.
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?@sha256:[0-9a-f]{64}", base), base


def test_every_copy_source_exists_in_the_repo(instructions: list[Instruction]) -> None:
    copies = local_copies(instructions)
    assert copies
    tracked = _git_tracked()
    for copy in copies:
        sources, _ = copy_sources_and_dest(copy)
        assert sources, copy
        for source in sources:
            assert not any(c in source for c in "*?["), (
                f"no globs, so nothing is silently empty: {source}"
            )
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file in the repo"
            if tracked is not None:
                # A clean clone (CI, a builder) has only what git tracks: an empty or
                # untracked directory is missing there.
                rel = source.rstrip("/")
                assert any(t == rel or t.startswith(rel + "/") for t in tracked), (
                    f"COPY {source}: not tracked by git, so absent from a fresh clone"
                )


def _git_tracked() -> set[str] | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    result = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=False
    )
    return set(result.stdout.splitlines()) if result.returncode == 0 else None


def test_dockerignore_lets_the_sources_through_and_keeps_local_state_out(
    instructions: list[Instruction],
) -> None:
    patterns = dockerignore_patterns()
    for copy in local_copies(instructions):
        sources, _ = copy_sources_and_dest(copy)
        for source in sources:
            assert not dockerignored(source, patterns), f".dockerignore drops {source}"
            if (ROOT / source).is_dir():
                for file in (ROOT / source).rglob("*.py"):
                    rel = file.relative_to(ROOT).as_posix()
                    assert not dockerignored(rel, patterns), f".dockerignore drops {rel}"
    for local in (".venv/bin/python", ".run/pg.env", ".git/config", "tests/pg.py", ".env"):
        assert dockerignored(local, patterns), f"{local} would be sent to the builder"
    assert dockerignored("worker/__pycache__/config.cpython-311.pyc", patterns)


def test_entrypoint_is_an_init_that_is_installed(instructions: list[Instruction]) -> None:
    [entrypoint] = of(instructions, "ENTRYPOINT")
    words = entrypoint.exec_form()
    init = Path(words[0]).name
    assert init in INITS, f"PID 1 must be an init ({', '.join(sorted(INITS))}), not {words[0]}"
    installs = " ".join(i.args for i in of(instructions, "RUN"))
    assert re.search(rf"(apt-get install|pip install)[^&;]*\b{re.escape(init)}\b", installs)
    if init == "tini":
        assert words[0] == "/usr/bin/tini"  # where Debian's package puts it
        assert words[1:] == ["--"], "'--' so that CMD's own flags reach supervisord"


def test_cmd_runs_supervisord_with_the_repo_config(instructions: list[Instruction]) -> None:
    [cmd] = of(instructions, "CMD")
    # Through the relay: supervisord's /dev/stdout is then a pipe of the app user's own,
    # whoever owns the runtime's (tests/unit/test_relay.py).
    assert cmd.exec_form() == [
        "python",
        "-m",
        "common.relay",
        "supervisord",
        "-c",
        "supervisord.conf",
    ]
    assert (ROOT / "common" / "relay.py").exists()
    # ... from the working directory that holds supervisord.conf.
    workdir = of(instructions, "WORKDIR")[-1].args
    copied = [copy_sources_and_dest(c) for c in local_copies(instructions)]
    [dest] = [dest for sources, dest in copied if "supervisord.conf" in sources]
    assert dest in ("./", ".", workdir, workdir + "/", f"{workdir}/supervisord.conf")


def test_supervisord_runs_as_a_non_root_user(instructions: list[Instruction]) -> None:
    users = of(instructions, "USER")
    assert users, "no USER: the container would run as root"
    user, _, group = users[-1].args.partition(":")
    assert user not in ("root", "0", "")
    assert user.isdigit(), "numeric, so that Kubernetes' runAsNonRoot can check it"
    assert group != "0"


def test_the_app_user_cannot_change_the_code(instructions: list[Instruction]) -> None:
    workdir = of(instructions, "WORKDIR")[-1].args
    assert workdir == "/app"
    for copy in local_copies(instructions):
        assert "--chown" not in copy.args and "--chmod" not in copy.args, copy
    for run in of(instructions, "RUN"):
        # Neither /app nor anything in it changes hands or gains write bits.
        for command in re.split(r"&&|;|\|\|", run.args):
            words = shlex.split(command)
            if words and words[0] in ("chown", "chmod", "chgrp"):
                targets = [w for w in words[1:] if not w.startswith("-")][1:]
                assert not any(t in (".", "./") or t.startswith("/app") for t in targets), run
            if words[:2] == ["install", "-d"] and "-o" in words:
                assert not any(w.startswith("/app") for w in words), run


def test_what_supervisord_writes_goes_to_a_run_dir_the_user_owns(
    instructions: list[Instruction],
) -> None:
    runs = _runs(instructions)
    # /app/.run, where supervisord.conf puts its socket, pidfile and metrics files, is a
    # root-owned link (made before USER) to a directory that is the app user's own.
    [(target,)] = [m.groups() for m in re.finditer(r"\bln -s (/\S+) /app/\.run\b", runs)]
    assert not target.startswith("/app"), target
    [install] = [c for c in runs.split("&&") if "install -d" in c and target in c]
    words = shlex.split(install)
    user = words[words.index("-o") + 1]
    assert user in ("app", "10001"), install
    # The workers' count, which worker-scaler writes into .run, is included through the
    # same link the checkout has.
    link = ROOT / "supervisord.workers.conf"
    assert re.search(rf"\bln -s {re.escape(str(link.readlink()))} /app/{link.name}\b", runs)
    conf = (ROOT / "supervisord.conf").read_text()
    assert "pidfile=%(here)s/.run/" in conf
    assert "file=%(here)s/.run/" in conf
    assert 'PROMETHEUS_MULTIPROC_DIR="%(here)s/.run/' in conf


def test_it_installs_the_hashed_lock_and_nothing_else(instructions: list[Instruction]) -> None:
    copied = {
        source: dest
        for c in local_copies(instructions)
        for sources, dest in [copy_sources_and_dest(c)]
        for source in sources
    }
    assert "requirements.lock" in copied
    installs = re.findall(r"pip install((?:\s+-\S+)*)\s+-r\s+(\S+)", _runs(instructions))
    assert [target for _, target in installs] == [copied["requirements.lock"]]
    [(flags, _)] = installs
    assert "--require-hashes" in flags.split(), "every package checked against its hash"
    assert not re.search(r"pip install(?![^&;]*--require-hashes)", _runs(instructions))
    assert "requirements-dev.txt" not in copied


def _runs(instructions: list[Instruction]) -> str:
    return " && ".join(i.args for i in of(instructions, "RUN"))


def test_the_image_holds_every_program_supervisord_runs(instructions: list[Instruction]) -> None:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(ROOT / "supervisord.conf")
    copied = {
        source.rstrip("/")
        for c in local_copies(instructions)
        for source in copy_sources_and_dest(c)[0]
    }
    for section in parser.sections():
        if section.startswith("program:"):
            command = shlex.split(parser.get(section, "command"))
            assert command[:2] == ["python", "-m"], command
            package = command[2].split(".")[0]
            assert package in copied, f"[{section}] runs {command[2]}, not copied"


def test_only_the_metrics_and_webhook_ports_are_exposed(instructions: list[Instruction]) -> None:
    assert [i.args for i in of(instructions, "EXPOSE")] == ["9187 8080"]


def test_the_healthcheck_asks_the_exporters_healthz(instructions: list[Instruction]) -> None:
    [check] = of(instructions, "HEALTHCHECK")
    options, _, command = check.args.partition(" CMD ")
    assert json.loads(command) == ["python", "-m", "metrics.healthcheck"]
    assert (ROOT / "metrics" / "healthcheck.py").exists()
    flags = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
    seconds = {k: int(v.removesuffix("s")) for k, v in flags.items() if k != "retries"}
    assert set(seconds) == {"interval", "timeout", "start-period"}
    assert seconds["timeout"] < seconds["interval"]
    # A worker beats within METRICS_HEARTBEAT_MAX_AGE (30 s) of its start.
    assert seconds["start-period"] >= 30
    assert int(flags["retries"]) >= 2, "one slow answer is not yet unhealthy"


def test_the_image_deploys_its_own_schema(instructions: list[Instruction]) -> None:
    installs = " ".join(i.args for i in of(instructions, "RUN"))
    [apt] = re.findall(r"apt-get install ([^&;]*)", installs)
    # sqitch's pg engine needs its DBI driver and runs psql.
    assert {"sqitch", "libdbd-pg-perl", "postgresql-client"} <= set(apt.split())
    copied = {
        source.rstrip("/"): dest
        for c in local_copies(instructions)
        for sources, dest in [copy_sources_and_dest(c)]
        for source in sources
    }
    assert copied["schema"].rstrip("/") in ("./schema", "schema", "/app/schema")
    assert copied["deploy/deploy_schema.py"].rstrip("/") in ("./deploy", "/app/deploy")
    # On PATH as deploy-schema; it finds schema/ beside its own directory.
    assert re.search(
        r"\bln -s /app/deploy/deploy_schema\.py /usr/local/bin/deploy-schema\b", installs
    )
    script = ROOT / "deploy" / "deploy_schema.py"
    assert script.read_text().startswith("#!/usr/bin/env python3\n")
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-s", "deploy/deploy_schema.py"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if tracked:
        assert tracked.startswith("100755 "), "COPY keeps git's mode: it must be executable"


def test_the_documented_stop_timeout_is_above_supervisords_stop_wait() -> None:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(ROOT / "supervisord.conf")
    stopwaitsecs = parser.getint("program:worker", "stopwaitsecs")
    text = DOCKERFILE.read_text()
    documented = [int(n) for n in re.findall(r"(?:--stop-timeout|docker stop -t) (\d+)", text)]
    assert documented, "the Dockerfile says how long `docker stop` must wait"
    assert all(n > stopwaitsecs for n in documented), (documented, stopwaitsecs)
