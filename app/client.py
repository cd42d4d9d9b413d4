"""Python client for the local API: `StewardClient`.

Finds the running instance through the endpoint file in the state dir and talks to it over its Unix socket
(no token needed: the kernel tells the engine who connected), else over TCP with the token from the token
file (app/client_channel.py: the port's owner is checked first, TLS certificates are pinned). Turns problem
JSON back into the same VramError classes the engine raised. Requests never go through a proxy
(`http_proxy` and friends are ignored): the token goes to the engine and to nobody else.

Loads and reservations are retried on retriable errors only (insufficient_vram, cuda_allocation_failed,
503/507 answers that do not say `"retriable": false`), with exponential backoff that never waits less than
the server's `retry_after`, a cap on attempts per model and on the total time, and an optional fallback to
smaller variants ("llama-70b" -> "llama-13b"). Every failed try is reported as a `RetryAttempt`: to the
`on_retry` callback as it happens, in `client.last_attempts`, in the result's "attempts", and on the error
raised when nothing worked (`exc.attempts`). Sleep, clock and randomness are injected for tests.

    client = StewardClient(variants={"llama-70b": ["llama-13b"]}, on_retry=print)
    result = client.load("llama-70b")          # result["loaded"] is the model that got in
    r = client.reserve(0, 6 * 2**30, "my-server", ttl_s=120, wait_s=30)
    ...allocate...; client.allocated(r["id"])  # or client.release(r["id"])
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.client_channel import Channel, TcpChannel, UnixChannel
from app.core import paths
from app.core.errors import InsufficientVram, VramError

logger = logging.getLogger(__name__)

RETRIABLE_CODES = frozenset({"insufficient_vram", "cuda_allocation_failed"})
RETRIABLE_STATUSES = frozenset({503, 507})
LONG_POLL_MAX_S = 60.0  # the server's cap on one long poll
WAIT_GRACE_S = 1.0  # after wait_s, how long to keep asking for the server's final answer

ChannelChoice = Literal["auto", "unix", "tcp"]


class NotRunning(VramError):
    code = "not_running"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"VRAM Steward is not running ({detail})",
            suggestions=["Start it with `vram-steward` (tray) or `vram-steward daemon` (headless)"],
        )


class _Unreachable(NotRunning):
    """The connection could not be made (nothing was sent)."""


class ApiError(VramError):
    """An error answer from the API, with its problem JSON."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(
            str(problem.get("message", f"HTTP {status}")),
            details=dict(problem.get("details") or {}),
            suggestions=list(problem.get("suggestions") or []),
            retry_after_s=problem.get("retry_after"),
        )
        self.status = status
        self.problem = problem
        self.code = str(problem.get("error", "api_error"))
        self.retriable = bool(problem.get("retriable", status in (503, 507)))


class InsufficientVramAnswer(InsufficientVram):
    """insufficient_vram as the API answered it (catch InsufficientVram), with its problem JSON."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        details = problem.get("details") or {}
        gpu = details.get("gpu")
        super().__init__(
            gpu=gpu if isinstance(gpu, int) else -1,
            needed_bytes=int(problem.get("need_bytes") or 0),
            available_bytes=int(problem.get("available_bytes") or 0),
            holder=str(details.get("holder") or ""),
            retry_after_s=problem.get("retry_after"),
            suggestions=list(problem.get("suggestions") or []) or None,
        )
        self.message = str(problem.get("message") or self.message)
        self.details.update(details)
        self.status = status
        self.problem = problem


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. `max_attempts` counts tries per model (or per reservation); `max_total_s` caps the
    whole call, fallbacks included. The delay after the n-th failure is
    min(max_delay_s, initial_delay_s * multiplier**(n-1)) * (1 + jitter_fraction * random()),
    and never less than the server's retry_after."""

    max_attempts: int = 4
    max_total_s: float = 120.0
    initial_delay_s: float = 1.0
    multiplier: float = 2.0
    max_delay_s: float = 30.0
    jitter_fraction: float = 0.1

    def delay_s(self, failures: int, retry_after_s: float | None, jitter: float = 0.0) -> float:
        backoff = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** max(failures - 1, 0))
        backoff *= 1.0 + self.jitter_fraction * jitter
        return max(backoff, retry_after_s or 0.0)


NO_RETRIES = RetryPolicy(max_attempts=1, max_total_s=0.0)


@dataclass(frozen=True)
class RetryAttempt:
    """One failed try and what the client did next."""

    target: str  # the model name, or "gpu0 reservation"
    attempt: int  # 1-based, counted per target
    status: int  # HTTP status of the answer
    error: str  # its problem code
    message: str
    retry_after_s: float | None  # what the server asked for
    next_action: str  # "retry" | "fallback" | "give_up"
    delay_s: float  # how long the client slept before the next try (0 unless retrying)
    next_target: str | None  # the variant tried next, for a fallback

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_retriable(exc: VramError) -> bool:
    """Retriable errors only: insufficient_vram, cuda_allocation_failed, and 503/507 answers that do not
    say `"retriable": false` (a lost GPU is 503 but retrying cannot help)."""
    problem = getattr(exc, "problem", None) or {}
    if exc.code in RETRIABLE_CODES:
        return True
    if problem.get("retriable") is True:
        return True
    return getattr(exc, "status", None) in RETRIABLE_STATUSES and problem.get("retriable") is not False


class StewardClient:
    """`base_url` (an http(s) URL) or `socket_path` name the engine; without either, the endpoint file does.
    `channel`: "auto" (the Unix socket when there is one, TCP when it cannot be reached), "unix" or "tcp".
    `fingerprint` pins a remote engine's TLS certificate ("sha256:..."; the endpoint file's by default),
    `ca_file` verifies it against a CA instead."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        socket_path: str | Path | None = None,
        channel: ChannelChoice = "auto",
        fingerprint: str | None = None,
        ca_file: str | Path | None = None,
        timeout_s: float = 15.0,
        state_dir: Path | None = None,
        retry: RetryPolicy | None = None,
        variants: Mapping[str, Sequence[str]] | None = None,
        on_retry: Callable[[RetryAttempt], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        endpoint_file = (state_dir / "api-endpoint.json") if state_dir else paths.api_endpoint_file()
        token_file = (state_dir / "api-token") if state_dir else paths.api_token_file()
        self.engine_pid: int | None = None  # the pid the endpoint file names, when it came from there
        from_endpoint = base_url is None and socket_path is None
        if from_endpoint:
            from app.core.api.endpoint import StaleEndpoint, read_live_endpoint

            try:
                endpoint = read_live_endpoint(endpoint_file)
            except StaleEndpoint as exc:  # never send the token to whatever listens there now
                raise NotRunning(exc.message) from exc
            if endpoint is None:
                raise NotRunning(f"no endpoint file at {endpoint_file}")
            base_url = endpoint.url
            socket_path = endpoint.socket
            fingerprint = fingerprint or endpoint.tls_fingerprint
            self.engine_pid = endpoint.pid
        self.base_url = base_url.rstrip("/") if base_url else None
        self.socket_path = str(socket_path) if socket_path and channel != "tcp" else None
        self._tcp: TcpChannel | None = None
        if self.base_url is not None and channel != "unix":
            self._tcp = TcpChannel(
                self.base_url,
                fingerprint=fingerprint,
                ca_file=Path(ca_file) if ca_file else None,
                endpoint_file=endpoint_file if from_endpoint else None,
            )
        self._channel: Channel
        if self.socket_path is not None:
            self._channel = UnixChannel(self.socket_path)
        elif self._tcp is not None:
            self._channel = self._tcp
        else:
            raise NotRunning(f"no {channel} channel to the engine ({endpoint_file} names none)")
        self.tls_fingerprint = self._tcp.fingerprint if self._tcp is not None else None
        self._token_file = token_file
        self.token = token
        if token is None and self._channel.needs_token:
            self.token = self._read_token()
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.variants = {k: list(v) for k, v in variants.items()} if variants is not None else None
        self.on_retry = on_retry
        self.sleep = sleep
        self.clock = clock
        self.jitter = jitter
        self.last_attempts: tuple[RetryAttempt, ...] = ()

    # --- transport -----------------------------------------------------------------------------

    @property
    def channel(self) -> str:
        """ "unix" or "tcp": what the next request uses."""
        return self._channel.kind

    @property
    def where(self) -> str:
        """The socket path or the URL the next request goes to (for messages)."""
        return self._channel.describe()

    def _read_token(self) -> str:
        from app.core.api.token import read_token  # TokenFileUnsafe for a symlink: not caught

        try:
            return read_token(self._token_file)
        except OSError as exc:
            raise NotRunning(f"no token file at {self._token_file}") from exc

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """One HTTP exchange. Raises InsufficientVram for insufficient_vram, ApiError for other problems
        (both with `.status` and `.problem`), NotRunning when nothing answers. A Unix socket that cannot
        be reached (removed, nobody listening) makes this and later requests use TCP, when there is one."""
        try:
            return self._exchange(method, path, body, timeout_s)
        except _Unreachable:  # not connected: nothing was sent, so trying TCP cannot do anything twice
            if self._channel.kind != "unix" or self._tcp is None:
                raise
            logger.info(
                "the API's Unix socket %s cannot be reached: using %s", self.socket_path, self.base_url
            )
            self._channel = self._tcp
            if self.token is None:
                self.token = self._read_token()
            return self._exchange(method, path, body, timeout_s)

    def _exchange(
        self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float | None
    ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if self._channel.needs_token:
            headers["Authorization"] = f"Bearer {self.token}"
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = self._channel.connection(timeout_s or self.timeout_s)  # PortNotOurs: not caught
        try:
            try:
                conn.connect()
            except VramError:
                raise  # a refused certificate: said as it is, not as "not running"
            except OSError as exc:
                raise _Unreachable(f"cannot reach {self._channel.describe()}: {exc}") from exc
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            status, payload, retry_after = resp.status, resp.read(), resp.getheader("Retry-After")
        except VramError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise NotRunning(f"cannot reach {self._channel.describe()}: {exc}") from exc
        finally:
            conn.close()
        if status >= 400:
            raise _error_from(status, payload, retry_after)
        return dict(json.loads(payload)) if payload else {}

    # --- plain calls ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def models(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/models")["models"])

    def unload(self, model: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/models/{_quote(model)}/unload", {})

    def verify(self, model: str) -> dict[str, Any]:
        """Recompute the chunk digests of what is in VRAM; raises ApiError (seal_verification_failed,
        details.damaged_chunks) when they differ."""
        return self.request("POST", f"/v1/models/{_quote(model)}/verify", {})

    def pause(self) -> dict[str, Any]:
        return self.request("POST", "/v1/pause", {})

    def resume(self) -> dict[str, Any]:
        return self.request("POST", "/v1/resume", {})

    def evict(self) -> dict[str, Any]:
        return self.request("POST", "/v1/evict", {})

    # --- with retries --------------------------------------------------------------------------

    def load(self, model: str, *, fallback: bool = True) -> dict[str, Any]:
        """Load `model`, retrying retriable refusals; then, with `fallback`, its smaller variants in order
        (from `variants=`, else from the server's model list). The result is the server's answer plus
        "requested", "loaded" (the model that got in) and "attempts" (every failed try)."""
        loaded, result = self._with_retries(
            [model],
            lambda name: self.request("POST", f"/v1/models/{_quote(name)}/load", {}),
            fallbacks=(lambda: self._variants_of(model)) if fallback else None,
        )
        return {**result, "requested": model, "loaded": loaded, "attempts": self._attempts_json()}

    def reserve(
        self, gpu: int, nbytes: int, holder: str, ttl_s: float = 300.0, wait_s: float | None = None
    ) -> dict[str, Any]:
        """Reserve `nbytes` on `gpu` before allocating them. Without `wait_s`, refusals are retried with
        backoff; with it, the server queues the request (FIFO per GPU) and this call waits up to `wait_s`
        for it (a wait that runs out raises InsufficientVram, not retried: the caller chose how long)."""
        body: dict[str, Any] = {"gpu": gpu, "bytes": nbytes, "holder": holder, "ttl_s": ttl_s}
        target = f"gpu{gpu} reservation"
        if not wait_s:
            _, result = self._with_retries([target], lambda _: self.request("POST", "/v1/reservations", body))
            return {**result, "attempts": self._attempts_json()}
        self.last_attempts = ()
        deadline = self.clock() + wait_s + WAIT_GRACE_S  # the server's own deadline comes first
        result = self.request("POST", "/v1/reservations", {**body, "wait_s": wait_s})
        while result.get("state") == "waiting":
            remaining = deadline - self.clock()
            poll_s = min(max(remaining, 0.0), LONG_POLL_MAX_S)
            result = self.request(
                "GET",
                f"/v1/reservations/{_quote(result['id'])}?wait_s={poll_s:.3f}",
                timeout_s=poll_s + self.timeout_s,
            )
            if remaining <= 0 and result.get("state") == "waiting":
                break  # the server's wait ends at the same time; its answer follows on the next look
        return {**result, "attempts": []}

    def reservation(self, reservation_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        query = f"?wait_s={wait_s:.3f}" if wait_s else ""
        return self.request(
            "GET", f"/v1/reservations/{_quote(reservation_id)}{query}", timeout_s=wait_s + self.timeout_s
        )

    def release(self, reservation_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/reservations/{_quote(reservation_id)}")

    def allocated(self, reservation_id: str) -> dict[str, Any]:
        """Tell the server the reserved bytes are allocated now (it counts them until NVML shows them)."""
        return self.request("POST", f"/v1/reservations/{_quote(reservation_id)}/allocated", {})

    # --- internals -----------------------------------------------------------------------------

    def _variants_of(self, model: str) -> list[str]:
        if self.variants is not None:
            return list(self.variants.get(model, []))
        for item in self.models():
            if item.get("name") == model:
                return [str(v) for v in item.get("variants") or []]
        return []

    def _attempts_json(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in self.last_attempts]

    def _with_retries(
        self,
        targets: Sequence[str],
        call: Callable[[str], dict[str, Any]],
        *,
        fallbacks: Callable[[], Sequence[str]] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Call `call(target)` for each target in turn until one succeeds; `fallbacks` (asked only after
        the first retriable failure) adds more targets at the end."""
        policy = self.retry
        deadline = self.clock() + policy.max_total_s
        attempts: list[RetryAttempt] = []
        targets = list(targets)
        self.last_attempts = ()
        index = -1
        while index + 1 < len(targets):
            index += 1
            target = targets[index]
            failures = 0
            while True:
                try:
                    result = call(target)
                except VramError as exc:
                    if not is_retriable(exc):
                        raise  # not retried, and no fallback: a variant cannot fix a bad request
                    if fallbacks is not None:
                        targets.extend(t for t in fallbacks() if t not in targets)
                        fallbacks = None
                    next_target = targets[index + 1] if index + 1 < len(targets) else None
                    failures += 1
                    retry_after = exc.retry_after_s
                    delay = policy.delay_s(failures, retry_after, self.jitter())
                    # insufficient_vram without retry_after: it can never fit on that GPU; retrying is futile
                    futile = exc.code == "insufficient_vram" and retry_after is None
                    can_retry = (
                        not futile and failures < policy.max_attempts and self.clock() + delay <= deadline
                    )
                    action = "retry" if can_retry else ("fallback" if next_target else "give_up")
                    record = RetryAttempt(
                        target=target,
                        attempt=failures,
                        status=int(getattr(exc, "status", 0) or 0),
                        error=exc.code,
                        message=exc.message,
                        retry_after_s=retry_after,
                        next_action=action,
                        delay_s=delay if can_retry else 0.0,
                        next_target=next_target if action == "fallback" else None,
                    )
                    attempts.append(record)
                    self.last_attempts = tuple(attempts)
                    logger.info("%s: %s (%s); %s", target, exc.code, exc.message, action)
                    if self.on_retry is not None:
                        self.on_retry(record)
                    if action == "retry":
                        self.sleep(delay)
                        continue
                    if action == "fallback":
                        break
                    exc.attempts = tuple(attempts)  # type: ignore[attr-defined]
                    raise
                self.last_attempts = tuple(attempts)
                return target, result
        raise AssertionError("unreachable: the last target either returns or raises")


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _error_from(status: int, raw: bytes, retry_after_header: str | None) -> VramError:
    try:
        problem = json.loads(raw)
        if not isinstance(problem, dict):
            raise ValueError("not an object")
    except ValueError:
        problem = {"error": "http_error", "message": raw.decode(errors="replace")[:200]}
    if "retry_after" not in problem and retry_after_header:
        with contextlib.suppress(ValueError):
            problem["retry_after"] = float(retry_after_header)
    if problem.get("error") == "insufficient_vram":
        return InsufficientVramAnswer(status, problem)
    return ApiError(status, problem)
