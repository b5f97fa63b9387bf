"""payment-worker: turns payments recorded in PostgreSQL into Stripe PaymentIntents."""
