"""Where the API listens, and how many connections each listener keeps at once.

- `bind_unix_socket()`: the API's Unix socket in the private runtime folder (0700), mode 0600. It is bound
  under a temporary name, made 0600 and renamed into place, so it is never reachable with looser bits and a
  socket left by a killed engine is replaced, never unlinked while someone else's bind is under way.
  `remove_unix_socket_if_ours()` removes it at stop only while it is still the one this process bound.
- `CappedSite`: an aiohttp site (TCP host and port, or a bound socket) that keeps at most `max_connections`
  connections open; one more is answered at once with a 503 problem (`too_many_connections`, Retry-After)
  and closed, so a flood cannot use up the process's descriptors. Each listener has its own cap, so a flood
  on TCP (open to other local users) never locks the CLI out of the Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import stat
import time
from pathlib import Path
from ssl import SSLContext
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o600
BACKLOG = 64  # what may wait in the kernel beyond the cap
PENDING_S = 1.0  # a handler made but never seen connected is forgotten after this (its connection failed)
LINGER_S = 0.5  # how long a refused connection's request is read and dropped before it is closed

_BUSY_BODY = json.dumps(
    {
        "error": "too_many_connections",
        "message": "the API has as many connections open as it keeps at once; this one is closed",
        "details": {},
        "suggestions": ["Retry in a second; reuse one keep-alive connection instead of opening many"],
        "retry_after": 1,
        "retriable": True,
    }
).encode()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n"
) + _BUSY_BODY


def bind_unix_socket(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    """A listening-ready Unix socket at `path` (its folder must be private: instance.private_runtime_dir),
    mode 0600; returns it and the (st_dev, st_ino) of the file, for remove_unix_socket_if_ours."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, SOCKET_MODE)  # before anyone can learn its name
        os.replace(temporary, path)
        info = os.lstat(path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    sock.setblocking(False)
    return sock, (info.st_dev, info.st_ino)


def remove_unix_socket_if_ours(path: Path, identity: tuple[int, int] | None) -> bool:
    """Remove the socket file only while it is the one we bound (another engine may have replaced it)."""
    if identity is None:
        return False
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode) or (info.st_dev, info.st_ino) != identity:
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


class _Refused(asyncio.Protocol):
    """A connection over the cap: told why (503 problem JSON) and closed. What the client sends meanwhile is
    read and dropped for up to LINGER_S (closing at once would make the kernel answer it with a reset, and
    the client would never read the 503); at most `cap.limit` refused connections linger at once, the rest
    are closed at once."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY_RESPONSE)
        if self._cap.lingering >= self._cap.limit:
            transport.close()
            return
        self._cap.lingering += 1
        self._transport = transport
        if transport.can_write_eof():
            transport.write_eof()  # the answer is whole: the client reads it, then the end
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request of a connection we do not serve

    def eof_received(self) -> bool:
        return False  # the client is done too: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport = None
            self._cap.lingering -= 1
        if self._timer is not None:
            self._timer.cancel()


class ConnectionCap:
    """The protocol factory of one listener: aiohttp's request handler while fewer than `limit` of this
    listener's connections are open, else `_Refused`."""

    def __init__(self, server: web.Server, limit: int, name: str) -> None:
        self._server = server
        self.limit = limit
        self.name = name
        # handler -> when it was made, or None once it was seen connected (asyncio connects it a moment
        # after the factory made it). A handler seen connected and now not is gone; one never seen connected
        # after PENDING_S had its connection fail. Costs O(open connections) per accept: at most `limit`.
        self._mine: dict[Any, float | None] = {}
        self.refused = 0
        self.lingering = 0  # refused connections still open (being told why)

    def open_count(self) -> int:
        now = time.monotonic()
        for handler, made_at in list(self._mine.items()):
            if handler.connected:
                self._mine[handler] = None
            elif made_at is None or now - made_at > PENDING_S:
                del self._mine[handler]
        return len(self._mine)

    def __call__(self) -> asyncio.Protocol:
        if self.open_count() >= self.limit:
            self.refused += 1
            logger.warning(
                "API %s: %d connections open, the most it keeps: refusing new ones (503)",
                self.name,
                self.limit,
            )
            return _Refused(self)
        handler = self._server()
        self._mine[handler] = time.monotonic()
        return handler


class CappedSite(web.BaseSite):
    """A TCP (host, port) or pre-bound socket listener whose connections are capped (ConnectionCap)."""

    __slots__ = ("_bound_port", "_host", "_port", "_sock", "cap", "max_connections")

    def __init__(
        self,
        runner: web.BaseRunner,
        *,
        max_connections: int,
        host: str | None = None,
        port: int | None = None,
        sock: socket.socket | None = None,
        ssl_context: SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=BACKLOG)
        self._host = host
        self._port = port
        self._sock = sock
        self._bound_port: int | None = None
        self.max_connections = max_connections
        self.cap: ConnectionCap | None = None

    @property
    def name(self) -> str:
        if self._sock is not None and self._sock.family == socket.AF_UNIX:
            return f"unix:{self._sock.getsockname()}"
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._bound_port or self._port}"

    @property
    def bound_port(self) -> int | None:
        return self._bound_port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert isinstance(server, web.Server)
        channel = "unix socket" if self._sock is not None and self._sock.family == socket.AF_UNIX else "TCP"
        self.cap = ConnectionCap(server, self.max_connections, channel)
        if self._sock is not None:
            self._server = await loop.create_server(
                self.cap, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog
            )
        else:
            assert self._port is not None
            self._server = await loop.create_server(
                self.cap,
                self._host,
                self._port,
                ssl=self._ssl_context,
                backlog=self._backlog,
                reuse_address=True,
            )
            sockets = self._server.sockets
            self._bound_port = int(sockets[0].getsockname()[1]) if sockets else self._port
