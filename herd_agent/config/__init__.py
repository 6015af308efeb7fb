"""Configuration: one schema (``schema.py``), a loader that merges files and validates (``loader.py``)."""

from herd_agent.config.loader import Config, load_config

__all__ = ["Config", "load_config"]
