"""Local HTTP stand-in for the Stripe PaymentIntents API, with fault injection: create,
retrieve, search, confirm, capture and cancel intents, expiring authorisations, refunds,
Events (``/v1/events``) and signed webhook delivery, and ``python -m stripe_standin
pay|3ds|settle|capture|refund`` to act as the customer (or a dashboard user).

Run it with ``python -m stripe_standin --help``. Tests start it with
:class:`stripe_standin.process.StandinProcess` and inspect it with
:class:`stripe_standin.client.StandinAdmin`.
"""

from stripe_standin.client import StandinAdmin, StandinAdminError
from stripe_standin.process import StandinProcess, StandinStartError

__all__ = ["StandinAdmin", "StandinAdminError", "StandinProcess", "StandinStartError"]
