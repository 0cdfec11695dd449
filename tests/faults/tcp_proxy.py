"""A loopback TCP forwarder whose connections the fault suite can cut, like a network blip."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes with RST rather than FIN, as a broken network path looks to both ends."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


class TcpProxy:
    """Listens on 127.0.0.1:<port> and forwards each connection to 127.0.0.1:<upstream_port>."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port: int | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._down_until = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy->{upstream_port}", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self, down_seconds: float = 0.0) -> int:
        """Resets every open connection and, for `down_seconds`, every new one; returns how many were cut."""
        self._down_until = time.monotonic() + down_seconds
        return self._call(self._cut())

    @property
    def open_links(self) -> int:
        return len(self._links)

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _call(self, coroutine, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if time.monotonic() < self._down_until:
            _reset(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(client_writer)
            return
        link = (client_writer, upstream_writer)
        self._links.add(link)
        try:
            await asyncio.gather(_pump(client_reader, upstream_writer), _pump(upstream_reader, client_writer))
        finally:
            self._links.discard(link)

    async def _cut(self) -> int:
        links = list(self._links)
        for link in links:
            for writer in link:
                _reset(writer)
        self._links.clear()
        return len(links)

    async def _shutdown(self) -> None:
        self._server.close()
        await self._cut()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
