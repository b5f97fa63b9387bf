"""deploy/kubernetes/payment-worker.yaml, read as YAML: a Deployment that runs the image as
its non-root user, gives supervisord's workers time to stop, probes the exporter and takes
its secrets from a Secret; a Service for the metrics; no Secret with values in the file."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.deployfiles import (
    DEPLOY,
    METRICS_PORT,
    dockerfile_run_dir,
    dockerfile_user,
    load_yaml_documents,
    supervisord_stopwaitsecs,
)

MANIFEST = DEPLOY / "kubernetes" / "payment-worker.yaml"


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    """By kind, and a Service by `Service/<name>`."""
    docs = [d for d in load_yaml_documents(MANIFEST) if d is not None]
    keys = [
        d["kind"] if d["kind"] != "Service" else f"Service/{d['metadata']['name']}" for d in docs
    ]
    assert len(keys) == len(set(keys))
    return dict(zip(keys, docs, strict=True))


@pytest.fixture(scope="module")
def pod(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return dict(documents["Deployment"]["spec"]["template"]["spec"])


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["containers"]
    return dict(c)


def test_the_objects(documents: dict[str, dict[str, Any]]) -> None:
    assert set(documents) == {
        "Deployment",
        "Service/payment-worker-metrics",
        "Service/payment-worker-webhooks",
    }
    assert documents["Deployment"]["apiVersion"] == "apps/v1"
    assert documents["Service/payment-worker-metrics"]["apiVersion"] == "v1"


def test_no_secret_values_in_the_file() -> None:
    text = MANIFEST.read_text()
    assert "kind: Secret" in text  # the commented example
    assert not re.search(r"\b(sk|rk)_(live|test)_[A-Za-z0-9]{12,}", text)
    for line in text.splitlines():
        if "kind: Secret" in line:
            assert line.lstrip().startswith("#"), line


def test_runs_as_the_images_non_root_user(pod: dict[str, Any], container: dict[str, Any]) -> None:
    uid, gid = dockerfile_user()
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_workers_get_time_to_finish_their_jobs(pod: dict[str, Any]) -> None:
    assert pod["terminationGracePeriodSeconds"] > supervisord_stopwaitsecs()


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(found)


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_ask_the_exporter(container: dict[str, Any], probe: str) -> None:
    http = container[probe]["httpGet"]
    assert http["path"] == "/healthz"
    assert named_port(container, http["port"]) == METRICS_PORT


def test_liveness_rides_out_a_database_outage(container: dict[str, Any]) -> None:
    # /healthz is 503 while the database is down: restarting the pods would not help.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 120


def test_environment(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    for name in ("DATABASE_URL", "STRIPE_API_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == name
        assert "value" not in env[name]
    assert 1 <= int(env["RIVER_WORKER_COUNT"]["value"]) <= 32
    assert int(env.get("METRICS_PORT", {"value": METRICS_PORT})["value"]) == METRICS_PORT
    # The exporter's default is loopback: Prometheus could not scrape the pod without this.
    assert env["METRICS_HOST"]["value"] == "0.0.0.0"  # noqa: S104
    # The receiver's secret and login come from the Secret, and may be absent (it stays
    # stopped); its port is the container's named one.
    for name in ("STRIPE_WEBHOOK_SECRET", "WEBHOOK_DATABASE_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == name and ref["optional"] is True
        assert "value" not in env[name]
    assert named_port(container, "webhooks") == int(env["WEBHOOK_PORT"]["value"]) == 8080


def test_the_root_filesystem_is_read_only_but_the_run_dir_is_writable(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # supervisord's socket, pidfile and metrics files (/app/.run links to the run dir);
    # supervisord's AUTO child logs in /tmp.
    for path in (dockerfile_run_dir(), "/tmp"):  # noqa: S108
        assert path in mounts, f"{path} must be a writable volume"
        assert "emptyDir" in volumes[mounts[path]]


def test_resources(container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_the_service_selects_the_pods(documents: dict[str, dict[str, Any]]) -> None:
    deployment = documents["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("metrics", "webhooks"):
        service = documents[f"Service/payment-worker-{name}"]
        assert service["spec"]["selector"].items() <= labels.items()


def test_the_service_is_annotated_for_scraping(
    documents: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    service = documents["Service/payment-worker-metrics"]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    (port,) = service["spec"]["ports"]
    assert port["port"] == METRICS_PORT
    assert named_port(container, port["targetPort"]) == METRICS_PORT


def test_the_webhook_service_reaches_the_receiver(
    documents: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    (port,) = documents["Service/payment-worker-webhooks"]["spec"]["ports"]
    assert named_port(container, port["targetPort"]) == 8080
