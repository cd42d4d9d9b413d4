"""What every model-server adapter shares at the wire: a small JSON-over-HTTP client with short timeouts that
turns every failure into one of two clear errors, and the backoff that keeps a server that is down from
causing an error storm.

The client uses only the standard library (http.client), so it ignores proxy environment variables: the
servers we manage listen on this machine or the LAN, and a desktop's `http_proxy` must not route 127.0.0.1
away. Every request has a deadline on the whole exchange; it runs on a holder's own thread, never on the
engine's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0  # the whole request (it runs on the holder's own thread, never the engine's)
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # a status answer larger than this is not one
BACKOFF_FIRST_S = 2.0
BACKOFF_MAX_S = 60.0


class ServerError(Exception):
    """A request to a model server failed. `message` is for people and names the server and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerUnreachable(ServerError):
    """Nothing answered: connection refused, timed out, or the connection broke."""


class ServerBadAnswer(ServerError):
    """Something answered, but not as the server's API does: an HTTP error, not JSON, or the wrong shape."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes
    content_type: str

    def json(self, what: str) -> Any:
        """The body as JSON; ServerBadAnswer (naming `what` was asked) when it is not."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ServerBadAnswer(
                f"{what} answered HTTP {self.status} with something that is not JSON "
                f"({self.content_type or 'no content type'}: {_snippet(self.body)!r}): {exc}",
                status=self.status,
            ) from exc


def _snippet(body: bytes, limit: int = 80) -> str:
    text = body[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(body) > limit else "")


class JsonHttpClient:
    """GET and POST JSON against one server's base URL, each with a timeout. Thread-safe (no shared state
    besides the request counter, which is informational)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        label: str = "the server",
        bearer: str = "",
    ):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{label}: url {base_url!r} is not an http:// or https:// URL with a host")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.label = label
        self.bearer = bearer  # sent as "Authorization: Bearer <bearer>" when set (a server's API key)
        self.requests_sent = 0

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        timeout_s: float | None = None,
        ok_statuses: tuple[int, ...] = (200,),
    ) -> HttpAnswer:
        """Send one request. `timeout_s` bounds the WHOLE request (connect, headers, body), not each socket
        read: a server that trickles its answer byte by byte is cut off at the deadline. Redirects are not
        followed (a model server has no reason to send us elsewhere) and the answer is capped at
        MAX_ANSWER_BYTES. Raises ServerUnreachable or ServerBadAnswer (a status not in ok_statuses)."""
        deadline_s = timeout_s or self.timeout_s
        data = None if body is None else json.dumps(body).encode("utf-8")
        url = self.url(path)
        what = f"{method} {url}"
        parts = urllib.parse.urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(parts.netloc, timeout=deadline_s)
        headers = {"Accept": "application/json", "Connection": "close"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.bearer:
            headers["Authorization"] = f"Bearer {self.bearer}"
        cut = threading.Event()

        def cut_off() -> None:  # at the deadline: end the exchange, whatever it is waiting for
            cut.set()
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(deadline_s, cut_off)
        timer.daemon = True
        self.requests_sent += 1
        timer.start()
        try:
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
            payload = _read_capped(response, MAX_ANSWER_BYTES + 1, cut)
            answer = HttpAnswer(
                status=response.status, body=payload, content_type=response.headers.get("Content-Type", "")
            )
            location = response.headers.get("Location")
        except (http.client.HTTPException, OSError) as exc:
            if cut.is_set() or isinstance(exc, TimeoutError):
                raise ServerUnreachable(f"{what}: no complete answer within {deadline_s:g} s") from exc
            if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
                raise ServerUnreachable(f"{what}: {_reason(exc)}") from exc
            raise ServerUnreachable(f"{what}: the connection broke ({type(exc).__name__}: {exc})") from exc
        finally:
            timer.cancel()
            connection.close()
        if cut.is_set():
            raise ServerUnreachable(f"{what}: no complete answer within {deadline_s:g} s")
        if len(answer.body) > MAX_ANSWER_BYTES:
            raise ServerBadAnswer(
                f"{what}: the answer is larger than {MAX_ANSWER_BYTES} bytes", status=answer.status
            )
        if 300 <= answer.status < 400 and answer.status not in ok_statuses:
            raise ServerBadAnswer(
                f"{what}: HTTP {answer.status}, redirects to {location or 'nowhere'}; VRAM Steward does not "
                "follow redirects: set the server's url to where it really listens",
                status=answer.status,
            )
        if answer.status not in ok_statuses:
            raise ServerBadAnswer(
                f"{what}: HTTP {answer.status}: {_snippet(answer.body)!r}", status=answer.status
            )
        return answer

    def get_json(self, path: str, *, timeout_s: float | None = None) -> Any:
        answer = self.request("GET", path, timeout_s=timeout_s)
        return answer.json(f"GET {self.url(path)}")

    def post_json(self, path: str, body: object, *, timeout_s: float | None = None) -> Any:
        answer = self.request("POST", path, body, timeout_s=timeout_s)
        return answer.json(f"POST {self.url(path)}")


def _read_capped(response: http.client.HTTPResponse, limit: int, cut: threading.Event) -> bytes:
    """Read at most `limit` bytes of the body, in pieces, stopping when the deadline cut the exchange."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and not cut.is_set():
        piece = response.read1(min(65536, limit - size))
        if not piece:
            break
        chunks.append(piece)
        size += len(piece)
    return b"".join(chunks)


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, socket.gaierror):
        return f"the host name does not resolve ({reason})"
    return str(reason)


Clock = Callable[[], float]
