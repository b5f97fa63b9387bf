"""deploy/docker-compose.yml, read as YAML (no Docker engine here): the services it promises,
pinned images, bind mounts of files that exist, ports on 127.0.0.1 only, and the wiring
between services (scrape target, datasource, schema before workers, stop grace period).
`docker compose config` runs too where the docker CLI has the compose plugin."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deployfiles import (
    DEPLOY,
    METRICS_PORT,
    ROOT,
    dockerfile_copies,
    load_yaml,
    mounts,
    supervisord_stopwaitsecs,
)

COMPOSE = DEPLOY / "docker-compose.yml"
SERVICES = {"postgres", "schema", "payment-worker", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with `env` as the environment."""
    env = env or {}

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        assert op != ":?", f"${{{name}}} is required: {arg}"
        return arg if op == ":-" else ""

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, value)


def test_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service and name in ("payment-worker", "schema"):
            continue
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: pin a tag, not {image}"
    assert services["postgres"]["image"].startswith("postgres:15")


def test_the_worker_is_built_from_the_repository(services: dict[str, dict[str, Any]]) -> None:
    build = services["payment-worker"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build.get("dockerfile", "Dockerfile")).is_file()


def test_no_standin_unless_the_image_has_it(services: dict[str, dict[str, Any]]) -> None:
    has_standin = "stripe_standin" in dockerfile_copies()
    runs_standin = [n for n, s in services.items() if "stripe_standin" in str(s.get("command", ""))]
    assert runs_standin == [] or has_standin


def test_bind_mounts_exist_in_the_repository(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for m in mounts(service):
            if m.is_bind:
                assert m.source is not None
                assert (DEPLOY / m.source).exists(), f"{name}: {m.source} does not exist"
                assert m.read_only, f"{name}: mount {m.source} read-only"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = {
        m.source
        for s in compose["services"].values()
        for m in mounts(s)
        if m.source and not m.is_bind
    }
    assert used == set(compose.get("volumes") or {})


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of a service's short-syntax ports."""
    out = []
    for spec in service.get("ports", []):
        ip, host, container = str(spec).split(":")
        out.append((ip, int(host), int(container)))
    return out


def test_ports_are_published_on_localhost_only(services: dict[str, dict[str, Any]]) -> None:
    seen: list[int] = []
    for name, service in services.items():
        for ip, host, _ in published(service):
            assert ip == "127.0.0.1", f"{name} publishes on {ip}"
            seen.append(host)
    assert len(seen) == len(set(seen))
    assert ("127.0.0.1", METRICS_PORT, METRICS_PORT) in published(services["payment-worker"])
    assert ("127.0.0.1", 9090, 9090) in published(services["prometheus"])
    assert ("127.0.0.1", 3000, 3000) in published(services["grafana"])
    assert published(services["postgres"]) == []


def test_prometheus_scrapes_the_worker_service(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(DEPLOY / "prometheus.yml")
    targets = [
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    worker_env = services["payment-worker"]["environment"]
    assert targets == [f"payment-worker:{worker_env['METRICS_PORT']}"]


def test_prometheus_gets_its_config_and_rules(services: dict[str, dict[str, Any]]) -> None:
    service = services["prometheus"]
    flags = dict(f.split("=", 1) for f in service["command"])
    binds = {m.target: m.source for m in mounts(service) if m.is_bind}
    config = flags["--config.file"]
    assert binds[config] == "./prometheus.yml"
    for rule_file in load_yaml(DEPLOY / "prometheus.yml")["rule_files"]:
        in_container = str(Path(config).parent / rule_file)
        assert in_container in binds, f"{rule_file} is not mounted next to prometheus.yml"
        assert (DEPLOY / str(binds[in_container])).resolve() == (DEPLOY / rule_file).resolve()
    assert flags["--storage.tsdb.path"] in {m.target for m in mounts(service) if not m.is_bind}


def test_grafana_gets_the_provisioning(services: dict[str, dict[str, Any]]) -> None:
    binds = {m.source: m.target for m in mounts(services["grafana"]) if m.is_bind}
    assert binds["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert "./grafana/payment-worker.json" in binds
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_schema_is_deployed_before_the_workers(services: dict[str, dict[str, Any]]) -> None:
    schema = services["schema"]
    # The worker's own image, which holds sqitch, schema/ and deploy-schema.
    assert schema["build"] == services["payment-worker"]["build"]
    assert schema["image"] == services["payment-worker"]["image"]
    assert {"schema", "deploy"} <= dockerfile_copies()
    command = [interpolate(str(c)) for c in schema["command"]]
    assert command[0] == "deploy-schema"
    url = interpolate(schema["environment"]["DATABASE_URL"])
    assert re.fullmatch(r"postgresql://postgres:[^@]+@postgres:5432/payment_worker", url)
    assert schema["healthcheck"] == {"disable": True}
    assert schema["depends_on"]["postgres"]["condition"] == "service_healthy"
    waits = services["payment-worker"]["depends_on"]
    assert waits["schema"]["condition"] == "service_completed_successfully"
    assert waits["postgres"]["condition"] == "service_healthy"


def test_the_worker_environment(services: dict[str, dict[str, Any]]) -> None:
    env = services["payment-worker"]["environment"]
    url = interpolate(env["DATABASE_URL"])
    assert re.fullmatch(r"postgresql://postgres:[^@]+@postgres:5432/payment_worker", url)
    database = services["postgres"]["environment"]["POSTGRES_DB"]
    assert url.endswith("/" + database)
    # no key in the file: compose refuses to start without one
    with pytest.raises(AssertionError, match="STRIPE_API_KEY"):
        interpolate(env["STRIPE_API_KEY"])
    assert interpolate(env["STRIPE_API_KEY"], {"STRIPE_API_KEY": "sk_test_x"}) == "sk_test_x"
    assert 1 <= int(interpolate(env["RIVER_WORKER_COUNT"])) <= 32
    # The exporter's default is loopback: the prometheus service could not scrape it.
    assert env["METRICS_HOST"] == "0.0.0.0"  # noqa: S104


def seconds(value: str) -> int:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert m and value, value
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def test_the_workers_get_time_to_finish_their_jobs(services: dict[str, dict[str, Any]]) -> None:
    grace = seconds(services["payment-worker"]["stop_grace_period"])
    assert grace > supervisord_stopwaitsecs()


def test_the_health_check_is_the_images(services: dict[str, dict[str, Any]]) -> None:
    check = services["payment-worker"]["healthcheck"]
    assert check["test"] == ["CMD", "python", "-m", "metrics.healthcheck"]
    assert "HEALTHCHECK" in (ROOT / "Dockerfile").read_text()


def docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    done = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    return [docker, "compose"] if done.returncode == 0 else None


@pytest.mark.skipif(docker_compose() is None, reason="no docker CLI with the compose plugin")
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    command = docker_compose()
    assert command is not None
    done = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STRIPE_API_KEY": "sk_test_x"},
    )
    assert done.returncode == 0, done.stderr
