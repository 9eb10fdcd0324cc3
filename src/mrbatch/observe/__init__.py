"""Observability: read-only views shared by the CLI's ``--json`` and the gateway's API
(:mod:`.views`) with the status verdict (:mod:`.health`), samples over time plus Prometheus
metrics (:mod:`.metrics`, :mod:`.recovery_metrics`), and optional OpenTelemetry traces
(:mod:`.tracing`)."""
