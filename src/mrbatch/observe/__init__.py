"""Observability: read-only views shared by the CLI's ``--json`` and the gateway's API
(:mod:`.views`), samples over time plus Prometheus metrics (:mod:`.metrics`,
:mod:`.recovery_metrics`), and optional OpenTelemetry traces (:mod:`.tracing`)."""
