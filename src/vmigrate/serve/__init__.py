"""`vmigrate serve`: the HTTP API, live events, Prometheus metrics and the web dashboard."""
