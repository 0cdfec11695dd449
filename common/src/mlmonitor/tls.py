"""TLS to RabbitMQ: an amqps:// AMQP_URL is always verified, and nothing turns that off.

The broker's certificate must chain to AMQP_CA_FILE (the system's CAs when it is not given) and
carry the name we connect to (AMQP_SERVER_NAME, else the URL's host), over TLS 1.2 or newer.
AMQP_CERT_FILE (and AMQP_KEY_FILE, unless the key is in the same file) give a client certificate
for mutual TLS. Any of these with a plain amqp:// URL is a mistake, refused rather than ignored.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, fields
from urllib.parse import parse_qs, urlsplit

import pika

from .broker_urls import split_urls

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsSetupError(ValueError):
    """A TLS setting that can't work, in one line naming the setting (never a secret's content)."""


@dataclass(frozen=True)
class AmqpTls:
    """The TLS settings of a connection to RabbitMQ, as ServiceSettings holds them (None: not given)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    @classmethod
    def from_environment(cls) -> AmqpTls:
        """AMQP_CA_FILE, AMQP_CERT_FILE, AMQP_KEY_FILE, AMQP_SERVER_NAME; an empty variable means not set."""
        return cls(**{field.name: os.environ.get(variable_of(field.name)) or None for field in fields(cls)})

    @property
    def given(self) -> list[str]:
        """The variables of the settings given, e.g. ["AMQP_CA_FILE"]."""
        return [variable_of(field.name) for field in fields(self) if getattr(self, field.name) is not None]


def variable_of(field_name: str) -> str:
    return f"AMQP_{field_name.upper()}"


def uses_tls(amqp_url: str) -> bool:
    return urlsplit(amqp_url).scheme.lower() == "amqps"


def check_url(amqp_url: str, tls: AmqpTls) -> None:
    """Refuses TLS settings with a plain URL, and pika's own `ssl_options` URL query, which could
    build a context that doesn't verify. The message never quotes the URL: it may hold a password."""
    if "ssl_options" in parse_qs(urlsplit(amqp_url).query):
        raise TlsSetupError("AMQP_URL: its ssl_options query is not supported; give AMQP_CA_FILE, "
                            "AMQP_CERT_FILE, AMQP_KEY_FILE or AMQP_SERVER_NAME instead")
    if tls.given and not uses_tls(amqp_url):
        raise TlsSetupError(f"{', '.join(tls.given)} given, but AMQP_URL is not amqps://: "
                            "use an amqps:// URL for TLS, or leave them out")
    if tls.key_file is not None and tls.cert_file is None:
        raise TlsSetupError("AMQP_KEY_FILE given without AMQP_CERT_FILE: the key belongs to a client certificate")


def ssl_context(tls: AmqpTls) -> ssl.SSLContext:
    """A client context that verifies the broker: CERT_REQUIRED, hostname checked, TLS 1.2 at least."""
    for variable, path in (("AMQP_CA_FILE", tls.ca_file), ("AMQP_CERT_FILE", tls.cert_file),
                           ("AMQP_KEY_FILE", tls.key_file)):
        _check_readable(variable, path)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except ssl.SSLError as problem:
        raise TlsSetupError(f"AMQP_CA_FILE: {tls.ca_file} holds no PEM certificate ({_reason(problem)})") from None
    context.minimum_version = MINIMUM_VERSION
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    if tls.cert_file is not None:
        _load_client_certificate(context, tls)
    return context


def _check_readable(variable: str, path: str | None) -> None:
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as problem:
        raise TlsSetupError(f"{variable}: cannot read {path}: {problem.strerror or type(problem).__name__}") from None


def _load_client_certificate(context: ssl.SSLContext, tls: AmqpTls) -> None:
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_encrypted_key)
    except _EncryptedKey:
        raise TlsSetupError(f"{'AMQP_KEY_FILE' if tls.key_file else 'AMQP_CERT_FILE'}: the private key is "
                            "encrypted; give it unencrypted, readable only by the service") from None
    except (OSError, ssl.SSLError) as problem:
        key = f"AMQP_KEY_FILE {tls.key_file}" if tls.key_file else "no AMQP_KEY_FILE"
        raise TlsSetupError(f"AMQP_CERT_FILE {tls.cert_file} with {key}: not a PEM certificate and its "
                            f"private key ({_reason(problem)})") from None


class _EncryptedKey(Exception):
    pass


def _refuse_encrypted_key() -> bytes:
    """Called only for an encrypted key: without it, OpenSSL would prompt on the terminal and hang."""
    raise _EncryptedKey


def _reason(problem: Exception) -> str:
    reason = getattr(problem, "reason", None) or re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(problem))
    return " ".join((reason or type(problem).__name__).split())[:200]


def ssl_options(tls: AmqpTls, host: str) -> pika.SSLOptions:
    """What pika needs for a verified connection to `host` (AMQP_SERVER_NAME overriding it)."""
    return pika.SSLOptions(ssl_context(tls), server_hostname=tls.server_name or host)


def check(amqp_url: str, tls: AmqpTls) -> None:
    """What connection_candidates refuses about TLS, refused the same way, at start, for each URL of
    AMQP_URL; the URLs themselves are left to pika, as before."""
    urls = split_urls(amqp_url)
    check_one_scheme(urls)
    for url in urls:
        check_url(url, tls)
    if uses_tls(urls[0]):
        ssl_context(tls)


def check_one_scheme(urls: list[str]) -> None:
    """Refuses amqp:// beside amqps://: a plain fallback would bypass TLS whenever a TLS node is down."""
    if len({uses_tls(url) for url in urls}) > 1:
        raise TlsSetupError("AMQP_URL mixes amqp:// and amqps:// URLs: a plain fallback would bypass TLS; "
                            "give every node with the same scheme")


def connection_parameters(amqp_url: str, tls: AmqpTls | None = None) -> pika.URLParameters:
    """pika's parameters for `amqp_url`; for amqps://, with our verifying SSLOptions in place of
    pika's. `tls` None: the settings are read from the environment."""
    tls = AmqpTls.from_environment() if tls is None else tls
    check_url(amqp_url, tls)
    parameters = pika.URLParameters(amqp_url)
    if uses_tls(amqp_url):
        parameters.ssl_options = ssl_options(tls, parameters.host)
    return parameters


def connection_candidates(amqp_url: str, tls: AmqpTls | None = None) -> list[pika.URLParameters]:
    """connection_parameters of each URL in AMQP_URL (one, or the nodes of a cluster), in order;
    pika.BlockingConnection takes the list and connects to the first that answers."""
    tls = AmqpTls.from_environment() if tls is None else tls
    urls = split_urls(amqp_url)
    check_one_scheme(urls)
    return [connection_parameters(url, tls) for url in urls]


_TLS_ALERT = re.compile(r"\b(?:sslv3|tlsv1[0-9]*) alert ([a-z ]*[a-z])")


def connect_problem(error: BaseException) -> str:
    """A failed connect in a few words: the error's type, and the TLS alert the broker ended the
    handshake with, if any (pika keeps only its text), e.g. 'IncompatibleProtocolError (the broker
    sent TLS alert: certificate required)' when it wants a client certificate we didn't give."""
    alert = _TLS_ALERT.search(str(error))
    return type(error).__name__ + (f" (the broker sent TLS alert: {alert.group(1)})" if alert else "")


def untrusted(error: ssl.SSLCertVerificationError) -> str:
    """Why we refused the broker's certificate, e.g. "Hostname mismatch, certificate is not valid for 'x'"."""
    return (error.verify_message or _reason(error)).rstrip(".")
