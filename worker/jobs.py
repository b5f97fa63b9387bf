"""The queue core's own types: a job, what its work returns or raises, and the registry
of kinds. Nothing here knows what a kind does (no payments, no Stripe)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    priority: int
    scheduled_at: datetime
    created_at: datetime
    # The claim's proof of holding the job (payments.job_lease): every outcome
    # presents it. None for a job this process did not claim.
    lease_token: UUID | None = field(default=None, repr=False)
    # len(errors) at the claim: River's backoff counts errors, not attempts.
    error_count: int = 0
    # Whether the claim took the job's wait lock, which its outcome then gives up.
    wait_locked: bool = field(default=False, repr=False)


class JobFailure(Exception):
    """The attempt failed. A permanent failure is discarded at once, any other is
    retried with backoff until max_attempts.

    `message` is the detail, for the job's errors[] and the log. `caller_message`,
    if any, is what the kind's "given up" effect may show its caller instead of
    its own neutral reason (a card decline). `context` adds fields to log lines."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        caller_message: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.caller_message = caller_message
        self.context = dict(context or {})


@dataclass(frozen=True)
class Done:
    """The attempt succeeded. `complete`, if given, records the kind's result and
    completes the job in one transaction, returning whether the job was still this
    attempt's; without it the core only completes the job."""

    complete: Callable[[Job], bool] | None = None
    context: Mapping[str, Any] = field(default_factory=dict)


Work = Callable[[Job], Done]


@dataclass(frozen=True)
class Kind:
    """A job kind: its work, and the schema function the database applies when
    one of its jobs is given up (discarded or cancelled, by anyone), or None."""

    name: str
    work: Work
    given_up: str | None


class KindMismatch(ValueError):
    """The kinds registered here and those the database knows (payments.job_kind) differ."""


class Kinds(Mapping[str, Kind]):
    """Every kind this process runs, each registered once with its given-up effect."""

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}

    def register(self, name: str, work: Work, *, given_up: str | None) -> None:
        if name in self._kinds:
            raise ValueError(f"job kind {name!r} registered twice")
        self._kinds[name] = Kind(name, work, given_up)

    def check(self, declared: Mapping[str, str | None]) -> None:
        """Refuses a kind whose given-up effect the database does not apply as
        registered here: its jobs could end with nothing done about them."""
        wrong = [
            f"{k.name} (registered {k.given_up or 'none'}, "
            f"database {declared.get(k.name, 'unknown kind') or 'none'})"
            for k in self._kinds.values()
            if k.name not in declared or declared[k.name] != k.given_up
        ]
        if wrong:
            raise KindMismatch(
                "job kinds whose given-up effect payments.job_kind does not match: "
                + ", ".join(sorted(wrong))
            )

    def __getitem__(self, name: str) -> Kind:
        return self._kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)
