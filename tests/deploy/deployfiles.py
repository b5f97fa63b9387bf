"""Shared by the tests of deploy/: the metrics contract, a YAML loader, a small PromQL
scanner, and where promtool and prometheus are."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# --- the metrics contract of `python -m metrics` --------------------------------------------

GAUGE, COUNTER, HISTOGRAM = "gauge", "counter", "histogram"

# name -> (type, label names)
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "payment_worker_jobs": (GAUGE, frozenset({"queue", "kind", "state"})),
    "payment_worker_oldest_available_job_age_seconds": (GAUGE, frozenset({"queue"})),
    "payment_worker_payments_recent": (GAUGE, frozenset({"status"})),
    "payment_worker_database_up": (GAUGE, frozenset()),
    "payment_worker_stripe_request_duration_seconds": (
        HISTOGRAM,
        frozenset({"operation", "outcome"}),
    ),
    "payment_worker_stripe_errors_total": (COUNTER, frozenset({"type"})),
    "payment_worker_jobs_finished_total": (COUNTER, frozenset({"kind", "outcome"})),
    "payment_worker_job_duration_seconds": (HISTOGRAM, frozenset({"kind", "outcome"})),
    "payment_worker_payment_latency_seconds": (HISTOGRAM, frozenset()),
    "payment_worker_jobs_rescued_total": (COUNTER, frozenset({"queue"})),
    "payment_worker_workers_up": (GAUGE, frozenset()),
    "payment_worker_heartbeat_timestamp_seconds": (GAUGE, frozenset()),
    # pid: the exporter's, one series per live worker process (multiprocess mode liveall).
    "payment_worker_loop_heartbeat_timestamp_seconds": (GAUGE, frozenset({"loop", "pid"})),
    # A payment's lifecycle (issue 10).
    "payment_worker_event_apply_seconds": (HISTOGRAM, frozenset()),
    "payment_worker_payment_observations_total": (COUNTER, frozenset({"kind", "result"})),
    "payment_worker_reconcile_queued_total": (COUNTER, frozenset()),
    "payment_worker_backfill_events_total": (COUNTER, frozenset()),
    "payment_worker_stripe_events_unapplied": (GAUGE, frozenset()),
    "payment_worker_oldest_unapplied_event_age_seconds": (GAUGE, frozenset()),
    "payment_worker_payments_open": (GAUGE, frozenset({"status"})),
    # Deferred capture and refunds (issue 11).
    "payment_worker_authorizations_expiring": (GAUGE, frozenset()),
    "payment_worker_authorization_expiry_seconds": (GAUGE, frozenset()),
    "payment_worker_refunds_open": (GAUGE, frozenset({"status"})),
}
# ... and of the webhook receiver (`python -m webhooks`), served by the same exporter from
# the multiprocess files once the receiver has answered a request (none without
# STRIPE_WEBHOOK_SECRET, when it stays stopped).
RECEIVER_CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "payment_worker_webhook_events_total": (COUNTER, frozenset({"type", "outcome"})),
    "payment_worker_webhook_rejections_total": (COUNTER, frozenset({"reason"})),
    "payment_worker_webhook_request_seconds": (HISTOGRAM, frozenset({"code"})),
}
# What alerts and dashboards may use.
ALL_METRICS = {**CONTRACT, **RECEIVER_CONTRACT}
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every series
SCRAPE_JOB = "payment-worker"
METRICS_PORT = 9187


def series_labels(name: str) -> frozenset[str] | None:
    """Label names a series called `name` may carry, or None if it is not in the contract."""
    if name in ALL_METRICS:
        kind, labels = ALL_METRICS[name]
        return None if kind == HISTOGRAM else labels | TARGET_LABELS
    for suffix, extra in (("_bucket", {"le"}), ("_count", set()), ("_sum", set())):
        base = name.removesuffix(suffix)
        if base != name and ALL_METRICS.get(base, ("", frozenset()))[0] == HISTOGRAM:
            return ALL_METRICS[base][1] | TARGET_LABELS | extra
    return None


# --- PromQL: which metrics and labels an expression uses ------------------------------------

KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "count", "count_values", "quantile"}
AGGREGATIONS |= {"stddev", "stdvar", "topk", "bottomk"}
_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<matchers>\{[^}]*\})
      | (?P<range>\[[^\]]*\])
      | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?)
      | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<open>\()
      | (?P<close>\))
      | (?P<space>\s+)
      | (?P<other>.)""",
    re.VERBOSE,
)
_MATCHER = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")\s*,?""")


@dataclass
class Selector:
    metric: str
    matchers: dict[str, str]


@dataclass
class Scan:
    selectors: list[Selector] = field(default_factory=list)
    grouping_labels: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)


def parse_matchers(block: str) -> dict[str, str]:
    inner = block[1:-1].strip()
    found: dict[str, str] = {}
    pos = 0
    while pos < len(inner):
        m = _MATCHER.match(inner, pos)
        assert m, f"cannot read label matchers {block!r}"
        found[m.group(1)] = json.loads(m.group(3))
        pos = m.end()
    return found


def scan_promql(expr: str) -> Scan:
    """Metric selectors, grouping labels and functions of a PromQL expression (enough of the
    language for these files: no bare `{...}` selectors)."""
    tokens = [
        (m.lastgroup, m.group())
        for m in _TOKEN.finditer(expr)
        if m.lastgroup not in ("space", "string")
    ]
    result = Scan()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in GROUPING:
            if following[0] == "open":
                j = i + 2
                while tokens[j][0] != "close":
                    if tokens[j][0] == "ident":
                        result.grouping_labels.add(tokens[j][1])
                    j += 1
                i = j
        elif kind == "ident" and (following[0] == "open" or text in AGGREGATIONS):
            result.functions.add(text)
        elif kind == "ident" and text.lower() not in KEYWORDS:
            matchers = parse_matchers(following[1]) if following[0] == "matchers" else {}
            result.selectors.append(Selector(text, matchers))
        elif kind == "matchers":
            assert i > 0 and tokens[i - 1][0] == "ident", f"bare selector in {expr!r}"
        i += 1
    return result


def contract_problems(expr: str) -> list[str]:
    """What in `expr` is not in the metrics contract: unknown metrics, unknown labels."""
    scan = scan_promql(expr)
    problems: list[str] = []
    known: set[str] = set(TARGET_LABELS)
    if not scan.selectors:
        problems.append(f"no metric at all in {expr!r}")
    for sel in scan.selectors:
        labels = series_labels(sel.metric)
        if labels is None:
            problems.append(f"{sel.metric} is not a metric of the contract")
            continue
        known |= labels
        problems += [f"{sel.metric} has no label {k}" for k in sel.matchers if k not in labels]
    problems += [f"no metric here has label {g}" for g in scan.grouping_labels - known]
    return problems


# --- YAML -----------------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[Any]:
    """Every document of a YAML file: with PyYAML when the venv has it, else with the
    system python3's (Debian python3-yaml)."""
    try:
        import yaml  # noqa: PLC0415
    except ImportError:
        pass
    else:
        with path.open() as f:
            return list(yaml.safe_load_all(f))
    code = (
        "import json, sys, yaml\njson.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)"
    )
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if not python or Path(python).resolve() == Path(sys.executable).resolve():
            continue
        done = subprocess.run(
            [python, "-c", code, str(path)], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            return list(json.loads(done.stdout))
        if "No module named 'yaml'" not in done.stderr:
            raise AssertionError(f"{path} is not valid YAML:\n{done.stderr}")
    raise AssertionError(
        "no YAML parser: add PyYAML to requirements-dev.txt (or apt-get install python3-yaml)"
    )


def load_yaml(path: Path) -> Any:
    documents = load_yaml_documents(path)
    assert len(documents) == 1, f"{path}: expected one YAML document, got {len(documents)}"
    return documents[0]


# --- promtool and prometheus ----------------------------------------------------------------


def prometheus_bindir() -> Path:
    """The directory of promtool and prometheus: $PW_PROMETHEUS_BINDIR (set by `make test`)
    or what scripts/ensure-prometheus.sh prints (it installs the Debian package if need be)."""
    given = os.environ.get("PW_PROMETHEUS_BINDIR")
    if given:
        return Path(given)
    done = subprocess.run(
        [str(ROOT / "scripts" / "ensure-prometheus.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, f"scripts/ensure-prometheus.sh failed:\n{done.stderr}"
    return Path(done.stdout.strip())


def promtool_path() -> Path:
    """$PW_PROMTOOL if set, else promtool next to prometheus (prometheus_bindir)."""
    given = os.environ.get("PW_PROMTOOL")
    return Path(given) if given else prometheus_bindir() / "promtool"


# --- docker compose ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str | None  # a path ('./x', '../x', '/x'), a named volume, or None (anonymous)
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source is not None and self.source.startswith((".", "/"))


def parse_mount(spec: str | dict[str, Any]) -> Mount:
    """A service's volume in compose's short (SOURCE:TARGET[:MODE]) or long syntax."""
    if isinstance(spec, dict):
        return Mount(spec.get("source"), spec["target"], bool(spec.get("read_only", False)))
    parts = spec.split(":")
    if len(parts) == 1:
        return Mount(None, parts[0], False)
    mode = parts[2] if len(parts) > 2 else "rw"
    return Mount(parts[0], parts[1], "ro" in mode.split(","))


def mounts(service: dict[str, Any]) -> list[Mount]:
    return [parse_mount(v) for v in service.get("volumes", [])]


# --- what the rest of the repository says -----------------------------------------------------


def supervisord_stopwaitsecs() -> int:
    """stopwaitsecs of the workers in supervisord.conf: the time each gets on SIGTERM."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(ROOT / "supervisord.conf")
    return parser.getint("program:worker", "stopwaitsecs")


def dockerfile_user() -> tuple[int, int]:
    """The numeric uid:gid of the Dockerfile's last USER."""
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile has no numeric USER uid:gid"
    uid, gid = users[-1]
    return int(uid), int(gid)


def dockerfile_run_dir() -> str:
    """Where the Dockerfile links the app's .run to: the one directory the app user writes."""
    links = re.findall(r"\bln -s (/\S+) /app/\.run\b", (ROOT / "Dockerfile").read_text())
    assert len(links) == 1, "the Dockerfile must link /app/.run to a writable run directory"
    return str(links[0])


def dockerfile_copies() -> set[str]:
    """Top-level names the Dockerfile COPYs from the build context."""
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied |= {w.strip("./").split("/")[0] for w in words[1:-1]}
    return copied
