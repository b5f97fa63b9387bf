"""deploy/grafana: the dashboard imports as is (no unresolved inputs, its datasource a
template variable), shows what the README promises, and its PromQL only uses the metrics
contract; the provisioning files match the compose file's Prometheus and mounts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.deployfiles import DEPLOY, contract_problems, load_yaml, mounts, scan_promql

DASHBOARD = DEPLOY / "grafana" / "payment-worker.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return panels


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in data_panels(dashboard) for t in p["targets"]]


def test_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "payment-worker"
    assert dashboard["uid"] == "payment-worker"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None  # an id would clash with dashboards already there


def test_the_datasource_is_a_variable_so_it_imports_as_is(dashboard: dict[str, Any]) -> None:
    # No __inputs: a ${DS_...} input only resolves in the import dialog, not when
    # provisioned from a file, whereas a datasource variable works for both.
    assert "__inputs" not in dashboard
    assert "${DS_" not in DASHBOARD.read_text()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in data_panels(dashboard):
        assert panel["datasource"] == wanted, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]


def test_panels_are_laid_out_on_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_panel_has_titled_queries(dashboard: dict[str, Any]) -> None:
    for panel in data_panels(dashboard):
        assert panel["title"] and panel["targets"], panel
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_queries_only_use_the_metrics_contract(dashboard: dict[str, Any]) -> None:
    problems = {e: contract_problems(e) for e in exprs(dashboard)}
    assert {e: p for e, p in problems.items() if p} == {}


def test_legends_name_labels_the_query_keeps(dashboard: dict[str, Any]) -> None:
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            legend = target.get("legendFormat", "")
            for label in [part.split("}}")[0].strip() for part in legend.split("{{")[1:]]:
                assert label in scan_promql(target["expr"]).grouping_labels, (panel["title"], label)


def panel_using(dashboard: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    return [
        p
        for p in data_panels(dashboard)
        if any(metric in {s.metric for s in scan_promql(t["expr"]).selectors} for t in p["targets"])
    ]


@pytest.mark.parametrize(
    ("metric", "needle"),
    [
        ("payment_worker_jobs", "by (state)"),
        ("payment_worker_oldest_available_job_age_seconds", ""),
        ("payment_worker_payment_latency_seconds_bucket", "histogram_quantile(0.5,"),
        ("payment_worker_payment_latency_seconds_bucket", "histogram_quantile(0.95,"),
        ("payment_worker_payment_latency_seconds_bucket", "histogram_quantile(0.99,"),
        ("payment_worker_stripe_request_duration_seconds_bucket", "histogram_quantile(0.5,"),
        ("payment_worker_stripe_request_duration_seconds_bucket", "histogram_quantile(0.99,"),
        ("payment_worker_stripe_errors_total", "by (type)"),
        ("payment_worker_stripe_request_duration_seconds_count", 'outcome="error"'),
        ("payment_worker_jobs_finished_total", "by (outcome)"),
        ("payment_worker_workers_up", ""),
        ("payment_worker_event_apply_seconds_bucket", "histogram_quantile(0.99,"),
        ("payment_worker_oldest_unapplied_event_age_seconds", ""),
        ("payment_worker_payments_open", "by (status)"),
        ("payment_worker_webhook_events_total", "by (outcome)"),
        ("payment_worker_webhook_rejections_total", "by (reason)"),
        ("payment_worker_webhook_request_seconds_bucket", "histogram_quantile(0.99,"),
        ("payment_worker_authorizations_expiring", ""),
        ("payment_worker_authorization_expiry_seconds", "min("),
        ("payment_worker_refunds_open", "by (status)"),
    ],
)
def test_the_dashboard_shows(dashboard: dict[str, Any], metric: str, needle: str) -> None:
    found = [
        t["expr"]
        for p in panel_using(dashboard, metric)
        for t in p["targets"]
        if needle in t["expr"]
    ]
    assert found, f"no panel queries {metric} with {needle!r}"


def test_rates_follow_the_dashboard_step(dashboard: dict[str, Any]) -> None:
    for expr in exprs(dashboard):
        if "rate(" in expr:
            assert "[$__rate_interval]" in expr, expr


# --- provisioning -------------------------------------------------------------------------


def test_the_datasource_is_the_compose_prometheus() -> None:
    config = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")
    assert config["apiVersion"] == 1
    (ds,) = config["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert ds["isDefault"] is True


def test_the_dashboard_provider_reads_where_compose_mounts_the_dashboard() -> None:
    config = load_yaml(PROVISIONING / "dashboards" / "payment-worker.yml")
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    binds = {m.source: m.target for m in mounts(compose["services"]["grafana"])}
    assert binds["./grafana/provisioning"] == "/etc/grafana/provisioning"
    target = binds["./grafana/payment-worker.json"]
    assert target.rsplit("/", 1)[0] == provider["options"]["path"]
