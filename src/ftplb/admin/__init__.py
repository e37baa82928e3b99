"""The admin HTTP API, Prometheus metrics and the status page."""
