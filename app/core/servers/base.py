"""What every model-server adapter shares at the wire: a small JSON-over-HTTP client with short timeouts that
turns every failure into one of two clear errors, and the backoff that keeps a server that is down from
causing an error storm.

The client uses only the standard library (urllib) and ignores proxy environment variables: the servers
we manage listen on this machine or the LAN, and a desktop's `http_proxy` must not route 127.0.0.1 away.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1.0  # connect and each read: the engine's worker thread must never wait long
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

    def __init__(self, base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, label: str = "the server"):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{label}: url {base_url!r} is not an http:// or https:// URL with a host")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.label = label
        self.requests_sent = 0
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

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
        """Send one request. Raises ServerUnreachable or ServerBadAnswer (for a status not in ok_statuses)."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url(path), data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        what = f"{method} {self.url(path)}"
        self.requests_sent += 1
        try:
            with self._opener.open(req, timeout=timeout_s or self.timeout_s) as response:
                answer = HttpAnswer(
                    status=response.status,
                    body=response.read(MAX_ANSWER_BYTES + 1),
                    content_type=response.headers.get("Content-Type", ""),
                )
        except urllib.error.HTTPError as exc:
            payload = exc.read(MAX_ANSWER_BYTES) if exc.fp is not None else b""
            answer = HttpAnswer(
                status=exc.code, body=payload, content_type=exc.headers.get("Content-Type", "")
            )
        except urllib.error.URLError as exc:
            raise ServerUnreachable(f"{what}: {_reason(exc.reason)}") from exc
        except TimeoutError as exc:
            raise ServerUnreachable(f"{what}: no answer within {timeout_s or self.timeout_s:g} s") from exc
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise ServerUnreachable(f"{what}: the connection broke ({type(exc).__name__}: {exc})") from exc
        if len(answer.body) > MAX_ANSWER_BYTES:
            raise ServerBadAnswer(
                f"{what}: the answer is larger than {MAX_ANSWER_BYTES} bytes", status=answer.status
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


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, socket.gaierror):
        return f"the host name does not resolve ({reason})"
    return str(reason)


class Backoff:
    """When to try a server that failed again: first after `first_s`, doubling up to `max_s`; reset by a
    success. Pure: the caller passes the time."""

    def __init__(self, *, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> None:
        if first_s <= 0 or max_s < first_s:
            raise ValueError(f"backoff: need 0 < first_s <= max_s, got first_s={first_s}, max_s={max_s}")
        self.first_s = first_s
        self.max_s = max_s
        self._next_delay_s = first_s
        self.failures = 0

    def failed(self) -> float:
        """Record a failure; returns how long to wait before the next attempt."""
        delay = self._next_delay_s
        self._next_delay_s = min(self._next_delay_s * 2, self.max_s)
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        self._next_delay_s = self.first_s
        self.failures = 0


Clock = Callable[[], float]
