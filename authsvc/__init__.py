"""authsvc: sessions and tokens for high-concurrency API backends."""
