"""The Stripe webhook receiver: verifies each delivery, records it with its job, then answers."""
