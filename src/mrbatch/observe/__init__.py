"""Observability: read-only views shared by the CLI's ``--json`` and the gateway's API
(:mod:`.views`), and samples over time plus Prometheus metrics (:mod:`.metrics`)."""
