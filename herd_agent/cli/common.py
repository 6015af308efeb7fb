"""What every agent command does first: load the config under the root and set up logging."""

from __future__ import annotations

from herd_agent.config.loader import Config, load_config
from herd_agent.logs import setup_logging


def prepare(obj: object, *, role: str | None = None) -> Config:
    """Load and validate the config for ``obj`` (the CLI's AppContext) and configure logging.

    Raises:
        ConfigError: the configuration is invalid (exit 78).
    """
    cfg = load_config(obj.root, role=role)  # type: ignore[attr-defined]
    setup_logging(obj.log_level or cfg.get("log.level"))  # type: ignore[attr-defined]
    return cfg
