"""The throughput benchmark: `make bench` (see docs/performance.md)."""
