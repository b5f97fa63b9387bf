"""`make bench` writes the run's RESULTS.md beside its raw results; only a recorded run
(BENCH_RECORD=1, --record) rewrites the committed bench/RESULTS.md."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import RECORDED, parse_args

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = f"# Results\n\nintro by hand\n\n{report.BEGIN}\nold numbers\n{report.END}\n\nnotes\n"


@pytest.fixture
def committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(
        report, "generated", lambda results: f"{report.BEGIN}\n{results}\n{report.END}"
    )
    path = tmp_path / "RESULTS.md"
    path.write_text(COMMITTED)
    return path


def test_a_run_writes_its_own_results_and_leaves_the_committed_file_alone(
    committed: Path, tmp_path: Path
) -> None:
    run_path = tmp_path / ".runs" / "20261202-120000" / "RESULTS.md"
    written = report.publish({"new": 1}, committed, run_path)
    assert written == [run_path]
    assert committed.read_text() == COMMITTED
    text = run_path.read_text()
    # The hand-written parts are kept around the new block.
    assert text.startswith("# Results\n\nintro by hand\n\n")
    assert "{'new': 1}" in text
    assert "old numbers" not in text
    assert text.endswith(f"{report.END}\n\nnotes\n")


def test_a_recorded_run_rewrites_the_committed_file_too(committed: Path, tmp_path: Path) -> None:
    run_path = tmp_path / "run" / "RESULTS.md"
    assert report.publish({"new": 2}, committed, run_path, record=True) == [run_path, committed]
    assert committed.read_text() == run_path.read_text()
    assert "{'new': 2}" in committed.read_text()


def test_the_defaults_record_nothing_and_a_quick_run_cannot_be_recorded() -> None:
    args = parse_args([])
    assert (args.record, args.results) == (False, None)
    assert RECORDED == ROOT / "bench" / "RESULTS.md"
    assert parse_args(["--record"]).record
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--record"])


@pytest.mark.parametrize(("variables", "record"), [([], False), (["BENCH_RECORD=1"], True)])
def test_make_bench_records_only_with_bench_record(variables: list[str], record: bool) -> None:
    dry = subprocess.run(
        ["make", "-n", "bench", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    [command] = [line for line in dry.stdout.splitlines() if "-m bench" in line]
    assert ("--record" in command.split()) is record
