"""requirements.lock against requirements.txt: every top-level requirement is locked at the
same version, every locked package carries hashes, and what installs the runtime set (the
Dockerfile, make venv) checks them."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ROOT / "requirements.txt"
LOCK = ROOT / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)$")
_HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level() -> dict[str, str]:
    pins = {}
    for raw in TOP_LEVEL.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            match = _PIN.match(line)
            assert match, f"requirements.txt: pin every top-level requirement with ==: {raw!r}"
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes), from the lock's continued requirement lines."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        assert not requirement.startswith("-"), f"no pip options in the lock: {raw!r}"
        match = _PIN.match(requirement)
        assert match, f"requirements.lock: not an exact pin: {raw!r}"
        for option in options:
            assert _HASH.match(option), f"{requirement}: not a sha256 hash: {option!r}"
        entries[canonical(match.group(1))] = (match.group(2), options)
    return entries


def test_every_top_level_requirement_is_locked_at_its_version() -> None:
    lock = locked()
    for name, version in top_level().items():
        assert name in lock, f"{name} is in requirements.txt but not locked: make lock"
        assert lock[name][0] == version, f"{name}: {version} wanted, {lock[name][0]} locked"


def test_every_locked_package_has_a_hash() -> None:
    lock = locked()
    assert len(lock) > len(top_level()), "the transitive dependencies are locked too"
    for name, (_, hashes) in lock.items():
        assert hashes, f"{name} has no --hash: pip --require-hashes would refuse the lock"


def test_the_lock_says_how_to_regenerate_it() -> None:
    lines = LOCK.read_text().splitlines()
    header = "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))
    assert re.search(r"^#\s+make lock$", header, re.M), header
    assert re.search(r"^lock:.*## ", (ROOT / "Makefile").read_text(), re.M)


def test_the_runtime_set_is_installed_with_hashes_checked() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pip install --require-hashes -r \S*requirements\.lock", dockerfile)
    venv = (ROOT / "scripts" / "ensure-venv.sh").read_text()
    assert re.search(r"pip install -q --require-hashes -r requirements\.lock", venv)
    # The stamp that skips a reinstall covers the lock, so a new lock is installed.
    assert "requirements.lock" in venv.split("req_hash()", 1)[1].split("}", 1)[0]
