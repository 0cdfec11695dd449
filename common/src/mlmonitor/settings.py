"""Settings read once, from the environment and the command line, with defaults that work locally.

Every field can be given as an env var (its name in upper case, e.g. AMQP_URL) or as a flag
(its name in kebab case, e.g. --amqp-url); the flag wins. `--help` lists them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=True,
        extra="ignore",
        env_ignore_empty=True,  # compose passes `DATA: ${DATA:-}`: an empty variable means "not set"
    )

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")


class ServiceSettings(CommonSettings):
    amqp_url: str = Field(DEFAULT_AMQP_URL, description="RabbitMQ address, vhost included.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port for Prometheus /metrics; 0 turns it off.")


class ConsumerSettings(ServiceSettings):
    prefetch: int = Field(500, ge=1, le=65535, description="Unacknowledged messages the broker may hand us at once.")


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(settings_cls: type[SettingsT], argv: list[str] | None = None, prog: str | None = None) -> SettingsT:
    """Builds the settings from env vars and the given command line (sys.argv by default)."""
    args = sys.argv[1:] if argv is None else argv
    prog = prog or Path(sys.argv[0]).name
    try:
        return settings_cls(_cli_parse_args=args, _cli_prog_name=prog)
    except ValidationError as error:  # a bad value: exit like argparse does for a bad flag
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}"
                             for item in error.errors(include_url=False))
        print(f"{prog}: error: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
