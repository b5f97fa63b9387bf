"""The layers, read from the source: what may import or run what."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The queue core: nothing in it may know what a kind does.
CORE = ("worker/jobs.py", "worker/executor.py", "worker/backoff.py")
PAYMENT_MODULES = ("worker.handlers", "worker.stripe_gateway", "worker.models", "stripe")
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|LISTEN|NOTIFY)\b.*\b(FROM|INTO|SET|\()", re.S
)


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module the file imports, by its full dotted name (relative ones resolved)."""
    names: set[str] = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def within(names: set[str], module: str) -> bool:
    return any(n == module or n.startswith(module + ".") for n in names)


def query_calls(path: Path) -> list[int]:
    return query_calls_in(path.read_text())


def query_calls_in(text: str) -> list[int]:
    """Lines that run SQL: .execute/.executemany/.copy of a query text, a named query
    (`Q[...]`, `QUERIES[...]`) or a psycopg.sql object; cursors; connections opened."""

    def is_query(arg: ast.expr) -> bool:
        if isinstance(arg, ast.Constant):
            return isinstance(arg.value, str)
        if isinstance(arg, ast.Subscript):
            return isinstance(arg.value, ast.Name) and arg.value.id in ("Q", "QUERIES")
        return isinstance(arg, ast.Call) and ast.unparse(arg.func).startswith("sql.")

    lines = []
    for node in ast.walk(ast.parse(text)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        attr = node.func.attr
        runs = attr in ("execute", "executemany", "copy") and node.args and is_query(node.args[0])
        if runs or attr == "cursor" or ast.unparse(node.func) == "psycopg.connect":
            lines.append(node.lineno)
    return lines


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("module", CORE)
def test_the_queue_core_imports_nothing_about_payments_or_stripe(module: str) -> None:
    names = imported(ROOT / module)
    assert [m for m in PAYMENT_MODULES if within(names, m)] == []


def test_metrics_imports_nothing_from_the_worker() -> None:
    offenders = {rel(p) for p in sources("metrics") if within(imported(p), "worker")}
    assert offenders == set()


def test_only_the_stripe_gateway_imports_stripe() -> None:
    importers = {
        rel(p) for p in sources("worker", "metrics", "common") if within(imported(p), "stripe")
    }
    assert importers == {"worker/stripe_gateway.py"}


def test_the_webhook_receiver_imports_nothing_of_the_worker_or_the_exporter() -> None:
    offenders = {
        rel(p)
        for p in sources("webhooks")
        if within(imported(p), "worker") or within(imported(p), "metrics")
    }
    assert offenders == set()


def test_nothing_else_imports_the_webhook_receiver() -> None:
    offenders = {
        rel(p)
        for p in sources("worker", "metrics", "common", "stripe_standin")
        if within(imported(p), "webhooks")
    }
    assert offenders == set()


def test_in_the_receiver_only_verify_imports_stripe_and_only_the_store_runs_sql() -> None:
    stripe_importers = {rel(p) for p in sources("webhooks") if within(imported(p), "stripe")}
    assert stripe_importers == {"webhooks/verify.py"}
    runners = {
        rel(p)
        for p in sources("webhooks")
        if query_calls(p)
        or within(imported(p), "psycopg_pool")
        or within(imported(p), "common.sqlfiles")
    }
    assert runners == {"webhooks/store.py"}


@pytest.mark.parametrize("module", ["worker/handlers.py", "worker/operations.py"])
def test_handlers_contain_no_sql(module: str) -> None:
    path = ROOT / module
    names = imported(path)
    assert not any(within(names, m) for m in ("psycopg", "worker.queries", "common.sqlfiles"))
    assert query_calls(path) == []
    strings = [
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    assert [s for s in strings if SQL_WORDS.search(s)] == []


def test_only_the_store_runs_queries() -> None:
    runners = {
        rel(p)
        for p in sources("worker")
        if query_calls(p)
        or within(imported(p), "worker.queries")
        # worker/queries.py is the registry the store reads: it loads, runs nothing.
        or (within(imported(p), "common.sqlfiles") and p.name != "queries.py")
    }
    assert runners == {"worker/store.py"}


def test_the_checks_see_what_they_look_for() -> None:
    """The detectors find a violation where there is one, so a pass above means something."""
    store = ROOT / "worker/store.py"
    assert query_calls(store)
    assert within(imported(store), "psycopg")
    assert within(imported(ROOT / "worker/stripe_gateway.py"), "stripe")
    assert within(imported(ROOT / "worker/handlers.py"), "worker.stripe_gateway")
    assert within(imported(ROOT / "webhooks/verify.py"), "stripe")
    assert query_calls(ROOT / "webhooks/store.py")
    assert within(imported(ROOT / "webhooks/__main__.py"), "webhooks.store")
    assert SQL_WORDS.search("SELECT id FROM payments.job_claim(%(max)s)")
    # The executor's execute(job) runs no SQL; a text or a named query does.
    assert query_calls(ROOT / "worker/producer.py") == []
    probe = "conn.execute(Q['x'])\ncur.execute('SELECT 1')\nconn.cursor()\nex.execute(job)\n"
    assert query_calls_in(probe) == [1, 2, 3]
