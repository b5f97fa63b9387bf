"""deploy/prometheus.yml and deploy/alerts.yml: promtool accepts them, the unit tests in
deploy/alerts.test.yml pass and cover every alert both firing and not firing, the rules only
use the metrics contract, and a throwaway prometheus server loads them."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deployfiles import (
    DEPLOY,
    METRICS_PORT,
    ROOT,
    SCRAPE_JOB,
    contract_problems,
    load_yaml,
)

# The first use may install the Debian package prometheus (scripts/ensure-prometheus.sh).
pytestmark = pytest.mark.timeout(900)

CONFIG = DEPLOY / "prometheus.yml"
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts.test.yml"
EXPECTED_ALERTS = {
    "OldestAvailableJobTooOld",
    "StripeErrorRateHigh",
    "WorkerDown",
    "WorkerLoopStalled",
    "JobsDiscarded",
    "PaymentLatencyP99High",
    "StripeEventsStuckUnapplied",
    "StripeWebhookSignatureRejections",
    "PaymentAuthorizationsExpiring",
}
README_SECTIONS = {"Failure modes", "Troubleshooting"}


def run_promtool(promtool: Path, *args: str) -> str:
    done = subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, check=False, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    assert [g["name"] for g in groups] == ["payment-worker"]
    return list(groups[0]["rules"])


def test_promtool_checks_the_config_and_its_rule_files(promtool: Path) -> None:
    out = run_promtool(promtool, "check", "config", str(CONFIG))
    assert "1 rule files found" in out


def test_promtool_checks_the_rules(promtool: Path) -> None:
    out = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert f"{len(EXPECTED_ALERTS)} rules found" in out


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    out = run_promtool(promtool, "test", "rules", str(ALERT_TESTS))
    assert "SUCCESS" in out


def test_the_config_scrapes_the_exporter_and_loads_the_alerts() -> None:
    config = load_yaml(CONFIG)
    assert [(CONFIG.parent / f).resolve() for f in config["rule_files"]] == [ALERTS]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == SCRAPE_JOB
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(f":{METRICS_PORT}") for t in targets), targets


def test_the_expected_alerts_exist(rules: list[dict[str, Any]]) -> None:
    assert sorted(r["alert"] for r in rules) == sorted(EXPECTED_ALERTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_alerts_only_use_the_metrics_contract(rules: list[dict[str, Any]], name: str) -> None:
    (rule,) = [r for r in rules if r["alert"] == name]
    assert contract_problems(rule["expr"]) == []


def readme_anchors() -> set[str]:
    """GitHub's anchors of README.md's headings."""
    anchors = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if m := re.match(r"#+\s+(.*)", line):
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_alerts_say_what_and_where_to_look(rules: list[dict[str, Any]], name: str) -> None:
    (rule,) = [r for r in rules if r["alert"] == name]
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert annotations["summary"] and "\n" not in annotations["summary"]
    assert "$value" in annotations["description"]
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "README.md"
    assert anchor in {s.lower().replace(" ", "-") for s in README_SECTIONS}
    assert anchor in readme_anchors(), f"README.md has no section #{anchor}"
    # a label the expression keeps is named in the text
    for label in re.findall(r"by \(([a-z_]+)\)", rule["expr"].split("offset")[0])[:1]:
        if label != "le":
            assert f"$labels.{label}" in annotations["description"]


def test_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    cases = [case for test in load_yaml(ALERT_TESTS)["tests"] for case in test["alert_rule_test"]]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fires == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


def test_unit_tests_catch_a_broken_rule(promtool: Path, tmp_path: Path) -> None:
    # The tests are not vacuous: raise one threshold and promtool must fail.
    broken = ALERTS.read_text().replace("job_age_seconds) > 60", "job_age_seconds) > 6000")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts.test.yml").write_text(ALERT_TESTS.read_text())
    done = subprocess.run(
        [str(promtool), "test", "rules", "alerts.test.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode != 0
    assert "OldestAvailableJobTooOld" in done.stdout + done.stderr


# --- a throwaway prometheus server ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> Any:
        if self.process.poll() is not None:
            pytest.fail(f"prometheus exited ({self.process.returncode}):\n{self.log.read_text()}")
        with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310
            return json.load(response)


@pytest.fixture
def prometheus_server(prometheus: Path, tmp_path: Path) -> Iterator[Server]:
    """A prometheus from the Debian package with deploy/alerts.yml, scraping every second a
    port where nothing listens."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": SCRAPE_JOB,
                        "static_configs": [{"targets": [f"127.0.0.1:{free_port()}"]}],
                    }
                ],
            }
        )
    )
    log_path = tmp_path / "prometheus.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            str(prometheus),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Server(f"http://127.0.0.1:{port}", process, log_path)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_prometheus_server_loads_the_rules(prometheus_server: Server) -> None:
    def rule_states() -> dict[str, str] | None:
        groups = prometheus_server.get("/api/v1/rules")["data"]["groups"]
        states = {r["name"]: r["state"] for g in groups for r in g["rules"]}
        # no exporter answers: workers_up is absent, so WorkerDown is pending at once
        return states if states.get("WorkerDown") == "pending" else None

    states = wait_for("WorkerDown to be pending", rule_states)
    assert set(states) == EXPECTED_ALERTS
    up = wait_for(
        "a first scrape",
        lambda: prometheus_server.get("/api/v1/query?query=up")["data"]["result"],
    )
    assert [(s["metric"]["job"], s["value"][1]) for s in up] == [(SCRAPE_JOB, "0")]
