"""Worked examples ``mrbatch init --example NAME`` adds beside the sample orders pipeline.

``events``: payment events as JSON Lines under ``input/events/``, checked by a wider schema
(a date-time, an email, a number with a minimum, an enum), a row check of the workspace's own
(``pipeline/events_rules.py``), enriched with exchange rates from an HTTP API (a small local
service, ``pipeline/rates_service.py``, which ``mrbatch up`` starts and supervises as the
service ``[services.rates]``), and a transform that adds the amount in EUR."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import UsageError

__all__ = ["EXAMPLES", "example_config", "write_example"]

EXAMPLES = {"events": ("events.schema.json", "events_rules.py", "rates_service.py",
                       "events-sample.jsonl")}  # fmt: skip

_EVENTS = """
# The events example (`mrbatch init --example events`): JSON Lines under input/events/, a row
# check and a transform of the workspace's own (pipeline/events_rules.py), exchange rates from
# an HTTP API, pipeline/rates_service.py, which `mrbatch up` starts and keeps running beside the
# deployment ([services.rates]; its output goes to <data dir>/logs/service-rates.log).
[services.rates]
command = ["python3", "pipeline/rates_service.py", "{api_port}"]

[pipelines.events]
prefix = "input/events/"
schema = "pipeline/events.schema.json"
format = "jsonl"
chunk_rows = 400
python_path = ["pipeline"]
checks = [
  {{ call = "events_rules:not_a_test_customer" }},
  {{ expr = "pl.col('occurred_at') >= '2026-01-01'", reason = "occurred_at: before 2026" }},
]
transforms = ["events_rules:amount_in_eur"]
timeout = "30s"
columns = ["event_id", "occurred_at", "customer", "currency", "amount", "rate_to_eur",
           "amount_eur"]

[pipelines.events.api]
url = "http://127.0.0.1:{api_port}/rates"
key = "currency"
columns = {{ rate_to_eur = "rate_to_eur" }}
batch = 100
attempts = 5
retry_backoff = "200ms"

[pipelines.events.file]
min_rows = 1

# [pipelines.events.webhook]
# url = "http://127.0.0.1:9000/hooks/mrbatch"   # a JSON POST per completed run
"""


def example_config(name: str, *, api_port: int) -> str:
    if name not in EXAMPLES:
        raise UsageError(
            f"no example named {name!r}", hint=f"examples: {', '.join(sorted(EXAMPLES))}"
        )
    return _EVENTS.format(api_port=api_port)


def write_example(directory: Path, name: str) -> list[Path]:
    """Copy the example's files into ``directory/pipeline``; returns them."""
    source = resources.files("mrbatch.config.samples").joinpath(name)
    written = []
    for file_name in EXAMPLES[name]:
        target = directory / "pipeline" / file_name
        target.write_bytes(source.joinpath(file_name).read_bytes())
        written.append(target)
    return written
