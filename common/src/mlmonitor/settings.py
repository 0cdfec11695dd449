"""Settings read once, from the environment and the command line, with defaults that work locally.

Every field can be given as an env var (its name in upper case, e.g. AMQP_URL) or as a flag
(its name in kebab case, e.g. --amqp-url); the flag wins. `--help` lists them.

A secret setting (declared with `secret_field`) can also come from a file, the Docker secrets
convention: `<NAME>_FILE` names the file, whose content, trailing newlines stripped, is the value.
Giving both `<NAME>` and `<NAME>_FILE`, or a file that can't be read, is an error at start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import tls
from .broker_urls import BrokerUrlError

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"
FROM_FILE = "from_file"  # the json_schema_extra key that marks a secret setting


def secret_field(default: Any = None, **kwargs: Any) -> Any:
    """A setting that `<NAME>_FILE` can also give, e.g. DASHBOARD_PASSWORD_FILE=/run/secrets/x."""
    return Field(default, json_schema_extra={FROM_FILE: True}, **kwargs)


def is_secret(field: FieldInfo) -> bool:
    return isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(FROM_FILE) is True


def read_secret_file(variable: str, path: str) -> str:
    """The file's content without its trailing newlines; the error names the variable, never the content."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        reason = problem.strerror if isinstance(problem, OSError) and problem.strerror else type(problem).__name__
        raise PydanticCustomError("secret_file", "{variable}: cannot read {path}: {reason}",
                                  {"variable": variable, "path": path, "reason": reason}) from None
    value = text.rstrip("\r\n")
    if not value:
        raise PydanticCustomError("secret_file", "{variable}: {path} is empty", {"variable": variable, "path": path})
    return value


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=True,
        extra="ignore",
        env_ignore_empty=True,  # compose passes `DATA: ${DATA:-}`: an empty variable means "not set"
    )

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, values: Any) -> Any:
        """For each secret setting, reads `<NAME>_FILE` when set (an empty variable counts as unset)."""
        if not isinstance(values, dict):
            return values
        for name, field in cls.model_fields.items():
            variable = f"{name.upper()}_FILE"
            path = os.environ.get(variable)
            if not is_secret(field) or not path:
                continue
            if values.get(name) is not None:
                raise PydanticCustomError("secret_file", "{name} and {variable} are both set: give only one",
                                          {"name": name.upper(), "variable": variable})
            values = {**values, name: read_secret_file(variable, path)}
        return values


class ServiceSettings(CommonSettings):
    amqp_url: str = secret_field(DEFAULT_AMQP_URL, description="RabbitMQ address, vhost included (or AMQP_URL_FILE); "
                                 "the nodes of a cluster comma-separated: the service connects to one that answers "
                                 "and moves to another when it goes away.")
    queue_type: Literal["classic", "quorum"] = Field("classic", description="Type of the queues the service "
                                                     "declares: quorum on a cluster (replicated, a delivery limit "
                                                     "for poison messages); the queues' type must match.")
    # TLS (mlmonitor.tls), for an amqps:// URL only, which is always verified
    amqp_ca_file: str | None = Field(None, description="CA bundle (PEM) the broker's certificate must chain to, "
                                     "for an amqps:// AMQP_URL; unset: the system's CAs.")
    amqp_cert_file: str | None = Field(None, description="Client certificate (PEM) for mutual TLS over amqps://, "
                                       "its private key included unless AMQP_KEY_FILE gives it.")
    amqp_key_file: str | None = Field(None, description="Private key (PEM, unencrypted) of AMQP_CERT_FILE, when not "
                                      "in that file.")
    amqp_server_name: str | None = Field(None, description="Name the broker's certificate must carry, also sent as "
                                         "SNI, for amqps://; unset: AMQP_URL's host.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port for Prometheus /metrics; 0 turns it off.")
    metrics_host: str = Field("127.0.0.1", description="Address /metrics listens on: this machine only unless "
                              "told otherwise, e.g. 0.0.0.0 for every interface (compose).")

    @model_validator(mode="after")
    def _check_amqp_tls(self) -> ServiceSettings:
        try:
            tls.check(self.amqp_url, self.amqp_tls)
        except (tls.TlsSetupError, BrokerUrlError) as problem:
            raise PydanticCustomError("amqp_tls", "{problem}", {"problem": str(problem)}) from None
        return self

    @property
    def amqp_tls(self) -> tls.AmqpTls:
        """What mlmonitor.amqp.ServiceRunner(tls=...) takes."""
        return tls.AmqpTls(self.amqp_ca_file, self.amqp_cert_file, self.amqp_key_file, self.amqp_server_name)


class ConsumerSettings(ServiceSettings):
    prefetch: int = Field(500, ge=1, le=65535, description="Unacknowledged messages the broker may hand us at once.")
    # the shared runtime (mlmonitor.amqp.ServiceRunner) reads MAX_MESSAGE_BYTES itself unless given the value
    max_message_bytes: int = Field(1 << 20, ge=1, description="Largest message body taken from a queue, checked "
                                   "before anything is parsed; a bigger one goes to <queue>.dlq with its reason, "
                                   "cut to its first 64 KiB.")


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


class _MessageLimits(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    max_message_bytes: int = ConsumerSettings.model_fields["max_message_bytes"]
    queue_type: Literal["classic", "quorum"] = ConsumerSettings.model_fields["queue_type"]


def max_message_bytes_from_environment() -> int:
    """MAX_MESSAGE_BYTES as ConsumerSettings checks it, or its default: what every consumer applies
    unless its runner is given another cap."""
    return _MessageLimits().max_message_bytes


def queue_type_from_environment() -> str:
    """QUEUE_TYPE as ServiceSettings checks it, or its default (classic): what a runner declares unless
    given. Here, not in mlmonitor.amqp, so that a tool can read it without that module's pika patches."""
    return _MessageLimits().queue_type


def load_settings(settings_cls: type[SettingsT], argv: list[str] | None = None, prog: str | None = None) -> SettingsT:
    """Builds the settings from env vars and the given command line (sys.argv by default)."""
    args = sys.argv[1:] if argv is None else argv
    prog = prog or Path(sys.argv[0]).name
    try:
        return settings_cls(_cli_parse_args=args, _cli_prog_name=prog)
    except ValidationError as error:  # a bad value: exit like argparse does for a bad flag
        problems = "; ".join(": ".join(filter(None, (".".join(map(str, item["loc"])), item["msg"])))
                             for item in error.errors(include_url=False))
        print(f"{prog}: error: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
