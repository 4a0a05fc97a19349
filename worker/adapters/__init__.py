"""What the ports are made of: Stripe (the only caller), the rate budget, the ledger
(PostgreSQL, or SQLite embedded)."""
