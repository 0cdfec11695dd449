"""The dashboard's web app (Starlette, served by uvicorn on a thread of its own).

    GET /              the page; its scripts and Chart.js come from /static, nothing from the internet
    GET /api/summary   the page's figures as JSON (count, mae, rmse, r2 … over every row of the CSV)
    GET /api/events    the same JSON as Server-Sent Events, pushed whenever it changes
    GET /metrics       Prometheus text

static/chart.umd.min.js is Chart.js 4.6.1 (MIT, static/chart.js.LICENSE.md) as the npm registry
ships it: `npm pack chart.js@4.6.1`, file package/dist/chart.umd.min.js, unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

log = logging.getLogger("dashboard.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
KEEP_ALIVE_SECONDS = 15.0


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


def create_app(state: Callable[[], dict], push_seconds: float = 0.5, static_dir: Path = STATIC_DIR) -> Starlette:
    cache = SnapshotCache(state, max_age=push_seconds / 2)

    async def page(_request: Request) -> Response:
        return FileResponse(static_dir / "index.html", headers={"Cache-Control": "no-cache"})

    async def summary(_request: Request) -> Response:
        return Response(cache.text(), media_type="application/json", headers={"Cache-Control": "no-store"})

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
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=static_dir), name="static"),
    ])


class WebServer:
    """uvicorn on a daemon thread, so the AMQP runtime keeps the main thread and its signal handlers."""

    def __init__(self, app, host: str, port: int):
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
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
