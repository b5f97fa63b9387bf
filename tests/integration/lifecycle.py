"""A PaymentIntent's life, scripted: the stand-in runs in this process so a test can move a
stored intent through Stripe's statuses, and events are recorded as the receiver records
them (payments.stripe_event_record)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID, uuid4

import psycopg
from psycopg.rows import dict_row

from stripe_standin.app import Reply, Request, Response, StandinApp, json_body
from stripe_standin.config import StandinConfig
from stripe_standin.server import StandinServer
from worker import handlers
from worker.executor import JobExecutor
from worker.jobs import Kinds
from worker.store import Store
from worker.stripe_gateway import StripeGateway, StripeSettings

API_KEY = "sk_test_payment_worker_tests"
STATUS_CHANNEL = "payments.payment_status"
SENTINEL = "test.sentinel"

DECLINE = {
    "type": "card_error",
    "code": "card_declined",
    "decline_code": "insufficient_funds",
    "message": "Your card has insufficient funds.",
}


class InProcessStandin:
    """The stand-in's HTTP server in a thread of this process, its intents at hand."""

    def __init__(self) -> None:
        self.app = StandinApp(StandinConfig(port=0, quiet=True))
        self._server = StandinServer(("127.0.0.1", 0), self.app, log=None)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        # Stripe's event list, newest last; served at GET /v1/events (see serve_events).
        self.events: list[dict[str, Any]] = []
        self.event_requests: list[dict[str, list[str]]] = []

    def serve_events(self) -> None:
        """Answers GET /v1/events from `self.events`, as Stripe's API reference describes
        the list (newest first, `created[gte]`, `type` with a `*` wildcard or `types[]`,
        `limit`,
        `starting_after`): the stand-in of this branch has no event list yet."""
        handle = self.app.handle_api

        def with_events(request: Request) -> Reply:
            if request.method != "GET" or request.path != "/v1/events":
                return handle(request)
            query = parse_qs(request.query)
            self.event_requests.append(query)
            gte = int(query["created[gte]"][0]) if "created[gte]" in query else 0
            prefix = query["type"][0].rstrip("*") if "type" in query else ""
            # types[]: exact names, as the SDK sends them (types[0]=..., types[1]=...).
            names = {v[0] for k, v in query.items() if k.startswith("types[")}
            limit = int(query.get("limit", ["10"])[0])
            found = [
                e
                for e in reversed(self.events)
                if e["created"] >= gte
                and (e["type"] in names if names else e["type"].startswith(prefix))
            ]
            if "starting_after" in query:
                ids = [e["id"] for e in found]
                found = found[ids.index(query["starting_after"][0]) + 1 :]
            page = {
                "object": "list",
                "url": "/v1/events",
                "has_more": len(found) > limit,
                "data": found[:limit],
            }
            return Response(200, json_body(page), {"content-type": "application/json"})

        self.app.handle_api = with_events  # type: ignore[method-assign]

    def fail_retrieves(self, times: int | None) -> list[str]:
        """The next `times` retrieves (every one, for None) answer Stripe's 500; returns the
        list of retrieve paths asked, as they arrive."""
        handle = self.app.handle_api
        asked: list[str] = []

        def failing(request: Request) -> Reply:
            if request.method != "GET" or not request.path.startswith("/v1/payment_intents/pi_"):
                return handle(request)
            asked.append(request.path)
            if times is not None and len(asked) > times:
                return handle(request)
            body = {"error": {"type": "api_error", "message": "Sorry, something went wrong."}}
            return Response(500, json_body(body), {"content-type": "application/json"})

        self.app.handle_api = failing  # type: ignore[method-assign]
        return asked

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def intent(self, intent_id: str) -> dict[str, Any]:
        found = self.app.intents.get(intent_id)
        assert found is not None, f"the stand-in has no {intent_id}"
        return found

    def move(self, intent_id: str, status: str, **changes: Any) -> dict[str, Any]:
        """Stripe moves the intent to `status` (with `changes`, e.g. last_payment_error);
        returns the intent as Stripe would put it in the event of that transition."""
        intent = self.intent(intent_id)
        intent.update(status=status, **changes)
        if status == "succeeded":
            intent["amount_received"] = intent["amount"]
            intent.setdefault("latest_charge", "ch_" + uuid4().hex[:24])
        self.app.intents.add(intent, None, "req_test")
        return intent


def gateway_for(url: str, network_retries: int = 0) -> StripeGateway:
    return StripeGateway(
        StripeSettings(
            api_key=API_KEY,
            api_base=url,
            connect_timeout=2,
            read_timeout=5,
            network_retries=network_retries,
        )
    )


def executor_for(store: Store, gateway: StripeGateway) -> JobExecutor:
    kinds = Kinds()
    handlers.register(kinds, store, gateway, "USD")
    return JobExecutor(store, kinds)


def run_available(store: Store, executor: JobExecutor, worker: str = "test-worker") -> int:
    """Claims and runs every available job, one at a time, until none is left."""
    ran = 0
    while jobs := store.job_get_available(1, worker):
        executor.execute(jobs[0])
        ran += 1
    return ran


def event(intent: dict[str, Any], type_: str, event_id: str | None = None) -> dict[str, Any]:
    """A Stripe event of `type_` whose data.object is `intent` as it was then."""
    return {
        "id": event_id or "evt_" + uuid4().hex,
        "object": "event",
        "type": type_,
        "created": int(time.time()),
        "api_version": "2024-06-20",
        "livemode": False,
        "pending_webhooks": 1,
        "data": {"object": intent},
    }


def record(conn: psycopg.Connection, evt: dict[str, Any], source: str = "webhook") -> str:
    row = conn.execute(
        "SELECT payments.stripe_event_record(%s::jsonb, %s)", (json.dumps(evt), source)
    ).fetchone()
    assert row is not None
    return str(row[0])


def event_row(conn: psycopg.Connection, event_id: str) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute("SELECT * FROM payments.stripe_events WHERE id = %s", (event_id,)).fetchone()
    assert row is not None
    return row


def apply_job_id(conn: psycopg.Connection, event_id: str) -> int:
    row = conn.execute(
        "SELECT id FROM metadata.river_job WHERE kind = 'apply_stripe_event'"
        " AND args->>'event_id' = %s",
        (event_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def status_of(conn: psycopg.Connection, payment_id: UUID) -> str:
    row = conn.execute(
        "SELECT status FROM payments.transactions WHERE id = %s", (payment_id,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def intent_id_of(conn: psycopg.Connection, payment_id: UUID) -> str:
    row = conn.execute(
        "SELECT provider_payment_id FROM payments.transactions WHERE id = %s", (payment_id,)
    ).fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])


@contextmanager
def status_listener(database_url: str) -> Iterator[psycopg.Connection]:
    listener = psycopg.connect(database_url, autocommit=True)
    try:
        listener.execute(f'LISTEN "{STATUS_CHANNEL}"')
        listener.execute(f'LISTEN "{SENTINEL}"')
        yield listener
    finally:
        listener.close()


def statuses_before_sentinel(
    listener: psycopg.Connection, sender: psycopg.Connection, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """payments.payment_status payloads committed before a sentinel sent now: delivery is in
    commit order, so absence is proven without sleeping."""
    token = uuid4().hex
    sender.execute("SELECT pg_notify(%s, %s)", (SENTINEL, token))
    payloads: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for notify in listener.notifies(timeout=left):
            if notify.channel == SENTINEL and notify.payload == token:
                return payloads
            if notify.channel == STATUS_CHANNEL:
                payloads.append(json.loads(notify.payload))
    raise AssertionError(f"sentinel not received within {timeout} s; got {payloads}")
