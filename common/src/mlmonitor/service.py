"""What every service does first: read its settings, set up logging and its /metrics endpoint."""

from __future__ import annotations

from .logs import configure_logging
from .observability import serve_metrics
from .settings import SettingsT, load_settings


def start_service(name: str, settings_cls: type[SettingsT], argv: list[str] | None = None) -> SettingsT:
    settings = load_settings(settings_cls, argv, prog=name)
    logger = configure_logging(getattr(settings, "log_name", "") or name, settings.log_level)  # e.g. model-2
    serve_metrics(getattr(settings, "metrics_port", 0), logger, getattr(settings, "metrics_host", "127.0.0.1"))
    return settings
