"""The local HTTP API (the one control channel), its OpenAPI schema and the Prometheus metrics."""
