"""JSON log lines, with secrets scrubbed."""

from __future__ import annotations

import io
import json
import logging

import pytest

from common import jsonlog as logs


def test_redact_known_secret_shapes() -> None:
    text = (
        "key sk_test_51Habc123 rk_live_xyz secret pi_3Nabc_secret_XYZ123 "
        "url postgresql://app:hunter2@db:5432/x dsn host=db password=hunter3 user=app"
    )
    clean = logs.redact(text)
    secrets = ("sk_test_51Habc123", "rk_live_xyz", "pi_3Nabc_secret_XYZ123", "hunter2", "hunter3")
    for secret in secrets:
        assert secret not in clean
    assert "postgresql://[redacted]@db:5432/x" in clean


def test_redact_a_masked_key_and_a_password_with_unencoded_ats() -> None:
    clean = logs.redact(
        "Invalid API Key provided: sk_test_****9999; url postgresql://app:p@ss@w0rd@db:5432/x"
    )
    assert clean == "Invalid API Key provided: [redacted]; url postgresql://[redacted]@db:5432/x"


def test_redact_listed_values() -> None:
    clean = logs.redact("the password is plain-words", ["plain-words"])
    assert clean == "the password is [redacted]"


def test_one_json_object_per_line_with_stable_keys(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", secrets=["s3cret-value"])
    try:
        logging.getLogger("worker.test").info(
            "job done with s3cret-value", extra={"job_id": 7, "payment_id": "p", "attempt": 1}
        )
        try:
            raise RuntimeError("boom sk_test_abcdef")
        except RuntimeError:
            logging.getLogger("worker.test").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert {"ts", "level", "logger", "msg", "pid", "process_name"} <= set(first)
    assert first["level"] == "INFO"
    assert first["logger"] == "worker.test"
    assert first["msg"] == "job done with [redacted]"
    assert (first["job_id"], first["payment_id"], first["attempt"]) == (7, "p", 1)
    assert "sk_test_abcdef" not in lines[1]
    assert "RuntimeError" in second["exc_info"]


def test_non_ascii_is_written_as_itself_not_escaped() -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    try:
        logging.getLogger("worker.test").info("schema not deployed… for “payments”")
    finally:
        logging.getLogger().handlers.clear()
    line = stream.getvalue().strip()
    assert "\\u" not in line
    assert json.loads(line)["msg"] == "schema not deployed… for “payments”"


def test_a_non_utf8_stream_escapes_what_it_cannot_encode() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    logs.configure("INFO", stream=stream)
    try:
        logging.getLogger("worker.test").info("wait…")
        stream.flush()
    finally:
        logging.getLogger().handlers.clear()
    # JSON reads the escape back as the character: the line stays whole and valid.
    assert json.loads(raw.getvalue().decode("ascii"))["msg"] == "wait…"
