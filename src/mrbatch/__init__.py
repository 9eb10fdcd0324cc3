"""mrbatch: resilient multi-region batch processing."""

# The one place the version is written (pyproject.toml reads it from here). Every long-running
# process reports it in its heartbeat, so `mrbatch status` shows a deployment running two.
__version__ = "0.3.0.dev0"
