"""Moved to :mod:`herd_agent.k3s.config` (k3s has its own module: names, config, service).

A thin re-export kept while other branches still import the old path.
"""

from herd_agent.k3s.config import CONFIG_FILE, endpoint_name, render, to_yaml, validate_extra, write

__all__ = ["CONFIG_FILE", "endpoint_name", "render", "to_yaml", "validate_extra", "write"]
