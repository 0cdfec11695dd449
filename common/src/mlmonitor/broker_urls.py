"""AMQP_URL as a list: one URL, or the nodes of a cluster, comma-separated (or one per line in AMQP_URL_FILE).

A comma starts a new URL only where a scheme (`amqp://`, `amqps://`) follows it, so a password with a
comma in it stays whole. Messages never quote a URL: it may hold a password.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

SCHEMES = ("amqp", "amqps")
_NEXT_URL = re.compile(r"\s*,\s*(?=[a-z][a-z0-9+.-]*://)|\s+(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)


class BrokerUrlError(ValueError):
    """AMQP_URL can't be split into URLs, in one line that quotes none of them."""


def split_urls(amqp_url: str) -> list[str]:
    """The URLs in AMQP_URL, in order. A single URL is returned as given (pika judges it, as before);
    with several, each must be amqp:// or amqps://."""
    urls = [url for url in _NEXT_URL.split(amqp_url.strip().strip(",")) if url]
    if not urls:
        raise BrokerUrlError("AMQP_URL is empty")
    if len(urls) > 1:
        for position, url in enumerate(urls, 1):
            if urlsplit(url).scheme.lower() not in SCHEMES:
                raise BrokerUrlError(f"AMQP_URL: URL {position} of {len(urls)} is not amqp:// or amqps://")
    return urls
