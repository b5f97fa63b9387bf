"""The receiver's refusal log: a flood of bad posts is a few lines, each saying how many it
stands for."""

from __future__ import annotations

import logging

import pytest

from webhooks.app import RejectionLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refusals(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [
        (r.__dict__["reason"], r.__dict__["refused"])
        for r in caplog.records
        if r.name == "webhooks" and r.getMessage().startswith("webhook rejected")
    ]


def test_a_flood_of_one_reason_is_one_line_per_period_counting_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    rejections = RejectionLog(every=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="webhooks"):
        for _ in range(1000):
            rejections.warn("signature", "no signature matches", "203.0.113.9")
            clock.now += 0.001  # a thousand in one second
        clock.now += 10.0
        rejections.warn("signature", "no signature matches", "203.0.113.9")
    assert refusals(caplog) == [("signature", 1), ("signature", 1000)]


def test_each_reason_has_its_own_period(caplog: pytest.LogCaptureFixture) -> None:
    rejections = RejectionLog(every=10.0, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="webhooks"):
        rejections.warn("signature", "bad", "")
        rejections.warn("stale", "old", "")
        rejections.warn("signature", "bad", "")
    assert refusals(caplog) == [("signature", 1), ("stale", 1)]
