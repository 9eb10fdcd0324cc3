"""mrbatch: resilient multi-region batch processing."""

__version__ = "0.2.0"
