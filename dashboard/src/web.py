"""The dashboard's web app (Starlette, served by uvicorn on a thread of its own).

    GET /              the page; its scripts and Chart.js come from /static, nothing from the internet
    GET /api/summary   the page's figures as JSON (count, mae, rmse, r2 … over every row of the CSV)
    GET /api/events    the same JSON as Server-Sent Events, pushed whenever it changes
    GET /api/drift     the drift service's detectors, score histories and alerts (drift_view.py); the
                       page polls it every few seconds, as it changes every second and is larger
    GET /metrics       Prometheus text

With a password (create_app's `auth`), every request on the port needs HTTP Basic credentials, the
event stream, /metrics and /static included; without one, anyone who reaches the port is let in.
Every response, a 401 included, carries security headers: a Content-Security-Policy that allows only
the dashboard's own scripts, styles and connections, no framing, no MIME sniffing, no referrer.

static/chart.umd.min.js is Chart.js 4.6.1 (MIT, static/chart.js.LICENSE.md) as the npm registry
ships it: `npm pack chart.js@4.6.1`, file package/dist/chart.umd.min.js, unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

log = logging.getLogger("dashboard.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
KEEP_ALIVE_SECONDS = 15.0
DRIFT_MAX_AGE = 0.5  # seconds a built /api/drift is served again: one read of the files for every page polling
NO_DRIFT_VIEW = {"available": False, "reason": "this dashboard was started without a drift view", "detectors": [],
                 "open_alerts": [], "recent_alerts": []}

CHALLENGE = 'Basic realm="mlmonitor", charset="UTF-8"'
# Only the dashboard's own files: no inline script or style, no other origin, not inside a frame.
# Chart.js sets styles through element.style (CSSOM), which style-src does not restrict.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def basic_credentials(authorization: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) as the client sent them, or None when the header is not well-formed Basic."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


class BasicAuth:
    """The dashboard's one user. The user and the password are both compared on every request, in
    constant time (hmac.compare_digest) and as SHA-256 digests, so not even their lengths show in
    the time a refusal takes."""

    def __init__(self, user: str, password: str):
        self._user = _digest(user.encode("utf-8"))
        self._password = _digest(password.encode("utf-8"))

    def allows(self, authorization: str | None) -> bool:
        sent = basic_credentials(authorization)
        user, password = sent or (b"", b"")
        user_matches = hmac.compare_digest(_digest(user), self._user)
        password_matches = hmac.compare_digest(_digest(password), self._password)
        return sent is not None and user_matches and password_matches


class RequireBasicAuth:
    """ASGI middleware: a request without the right credentials gets a bare 401 and the challenge."""

    def __init__(self, app: ASGIApp, auth: BasicAuth):
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization")
        if self.auth.allows(authorization):
            await self.app(scope, receive, send)
            return
        if authorization is not None:
            client = scope.get("client")
            log.warning("refused wrong credentials from %s", client[0] if client else "an unknown client")
        if scope["type"] == "websocket":
            await WebSocketClose(code=1008)(scope, receive, send)
            return
        refusal = PlainTextResponse("Unauthorized\n", status_code=401,
                                    headers={"WWW-Authenticate": CHALLENGE, "Cache-Control": "no-store"})
        await refusal(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every HTTP response, refusals and static files included."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def warn_if_exposed(host: str, port: int, auth: BasicAuth | None, logger: logging.Logger) -> None:
    """The loud warning at start: reachable beyond this machine and no password."""
    if auth is None and not is_loopback(host):
        logger.warning("NO PASSWORD: the dashboard listens on %s:%d and shows the model's live quality to anyone "
                       "who can reach it; set DASHBOARD_PASSWORD or DASHBOARD_PASSWORD_FILE, or DASHBOARD_HOST="
                       "127.0.0.1", host or "every interface", port)


class SnapshotCache:
    """The state as JSON text, built at most once per `max_age` seconds however many pages watch."""

    def __init__(self, build: Callable[[], dict], max_age: float, clock=time.monotonic):
        self._build = build
        self._max_age = max_age
        self._clock = clock
        self._text = ""
        self._built_at = float("-inf")

    def text(self) -> str:
        now = self._clock()
        if now - self._built_at >= self._max_age:
            self._text = json.dumps(self._build(), allow_nan=False, separators=(",", ":"))
            self._built_at = now
        return self._text


def create_app(state: Callable[[], dict], push_seconds: float = 0.5, static_dir: Path = STATIC_DIR,
               auth: BasicAuth | None = None, drift: Callable[[], dict] = lambda: NO_DRIFT_VIEW) -> Starlette:
    """The app; with `auth`, every request needs its credentials. `drift` builds GET /api/drift."""
    cache = SnapshotCache(state, max_age=push_seconds / 2)
    drift_cache = SnapshotCache(drift, max_age=DRIFT_MAX_AGE)

    async def page(_request: Request) -> Response:
        return FileResponse(static_dir / "index.html", headers={"Cache-Control": "no-cache"})

    async def summary(_request: Request) -> Response:
        return Response(cache.text(), media_type="application/json", headers={"Cache-Control": "no-store"})

    async def drift_state(_request: Request) -> Response:
        return Response(drift_cache.text(), media_type="application/json", headers={"Cache-Control": "no-store"})

    async def events(_request: Request) -> Response:
        async def stream():
            sent = None
            quiet = 0.0
            while True:
                text = cache.text()
                if text != sent:
                    sent, quiet = text, 0.0
                    yield f"data: {text}\n\n"
                elif quiet >= KEEP_ALIVE_SECONDS:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(push_seconds)
                quiet += push_seconds

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/", page),
        Route("/api/summary", summary),
        Route("/api/events", events),
        Route("/api/drift", drift_state),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=static_dir), name="static"),
    ], middleware=[Middleware(SecurityHeaders)] + ([Middleware(RequireBasicAuth, auth=auth)] if auth else []))


class WebServer:
    """uvicorn on a daemon thread, so the AMQP runtime keeps the main thread and its signal handlers."""

    def __init__(self, app, host: str, port: int):
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    def start(self, timeout: float = 15.0) -> None:
        """Returns once the server listens; raises if it can't (say, the port is taken)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the web server did not start on {self._server.config.host}:"
                                   f"{self._server.config.port} (is the port taken? see the error above)")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)
