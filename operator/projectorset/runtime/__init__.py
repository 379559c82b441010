"""The operator process: the entry point, the Kopf handlers and the Prometheus metrics."""
