"""The local HTTP API: the one control channel (CLI commands, the tray's single-instance hand-off, clients).

Loopback only unless the user sets `allow_remote_api`; every endpoint except /healthz and /metrics needs the
bearer token kept in a file only the user can read (0600). Errors are problem JSON (errors.py). Served by
aiohttp on the asyncio thread; handlers never touch the engine's state, they submit commands and read the
latest immutable snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from app import __version__
from app.core import paths
from app.core.api.endpoint import ApiPortUnavailable, remove_endpoint_if_ours, write_endpoint
from app.core.api.schema import MAX_LONG_POLL_S, openapi_document
from app.core.atomic import write_atomic
from app.core.engine.commands import Outcome
from app.core.engine.steward import Steward, StewardSnapshot
from app.core.errors import InsufficientVram, InvalidInput, VramError
from app.core.loopback import is_loopback
from app.core.policy.contention import Command
from app.core.residency.ledger import RETRY_AFTER_FOREIGN_S
from app.core.residency.reservations import (
    ReservationBook,
    ReservationState,
    parse_reservation_request,
    parse_seconds,
)

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
COMMAND_TIMEOUT_S = 10.0
VERIFY_TIMEOUT_S = 600.0  # reading back a large model on the CPU path takes a while
LONG_POLL_STEP_S = 0.05  # how often a long poll looks at its reservation again
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def problem(status: int, error: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {
        "error": error,
        "message": message,
        "details": extra.pop("details", {}),
        "suggestions": extra.pop("suggestions", []),
        "retry_after": extra.pop("retry_after", None),
    }
    body.update(extra)
    return web.json_response(body, status=status, content_type="application/problem+json")


def problem_from(exc: VramError) -> web.Response:
    status = exc.http_status if 400 <= exc.http_status < 600 else 500
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return web.json_response(
        exc.to_problem(), status=status, headers=headers, content_type="application/problem+json"
    )


def load_or_create_token(path: Path | None = None) -> str:
    """The API token: created on first run (random, 0600), then reused. A looser file mode is fixed."""
    path = path or paths.api_token_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if path.stat().st_mode & 0o077:
            logger.warning("API token file %s was readable by others; fixed to 0600", path)
            os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    write_atomic(path, token + "\n", mode=0o600)
    return token


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiServer:
    """aiohttp application bound to the engine. `start()`/`stop()` run on the asyncio thread's loop."""

    def __init__(
        self,
        steward: Steward,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str,
        allow_remote: bool = False,
        endpoint_file: Path | None = None,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        if not is_loopback(host) and not allow_remote:
            raise InvalidInput(
                f"refusing to serve the API on {host}: only loopback addresses are allowed unless "
                "allow_remote_api = true is set in the config",
                field_name="api_host",
                value=host,
            )
        if not is_loopback(host):
            logger.warning("the API listens on %s, reachable from other machines (allow_remote_api)", host)
        self.steward = steward
        self.host = host
        self.port = port
        self.token = token
        self.endpoint_file = endpoint_file
        self.metrics = metrics
        self.reservations = ReservationBook(steward.ledgers, clock=steward.clock)
        self.app = web.Application(middlewares=[self._errors, self._auth], client_max_size=MAX_BODY_BYTES)
        self._routes()
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None
        self._endpoint_written: dict[str, Any] | None = None  # what start() wrote to endpoint_file

    def _routes(self) -> None:
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.get_metrics)
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/models", self.models)
        r.add_post("/v1/models/{name}/load", self.load)
        r.add_post("/v1/models/{name}/unload", self.unload)
        r.add_post("/v1/models/{name}/verify", self.verify)
        r.add_post("/v1/pause", self.command("pause"))
        r.add_post("/v1/resume", self.command("resume"))
        r.add_post("/v1/evict", self.command("evict_now"))
        r.add_post("/v1/show", self.command("show"))
        r.add_get("/v1/openapi.json", self.openapi)
        r.add_get("/v1/reservations", self.list_reservations)
        r.add_post("/v1/reservations", self.create_reservation)
        r.add_get("/v1/reservations/{id}", self.get_reservation)
        r.add_delete("/v1/reservations/{id}", self.delete_reservation)
        r.add_post("/v1/reservations/{id}/allocated", self.reservation_allocated)

    async def start(self) -> int:
        """Listen (port 0: any free port) and record the bound port in the endpoint file. Raises
        ApiPortUnavailable, naming host:port and the `api_port` key, when the port cannot be had."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ApiPortUnavailable(self.host, self.port, exc) from exc
        self.steward.subscribe_snapshots(self._after_tick)
        addresses = self._runner.addresses  # (host, port[, ...]) of every bound socket
        self.bound_port = int(addresses[0][1]) if addresses else self.port
        if self.endpoint_file is not None:
            self._endpoint_written = write_endpoint(self.endpoint_file, self.host, self.bound_port)
        logger.info("API listening on http://%s:%s", self.host, self.bound_port)
        return self.bound_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.endpoint_file is not None:  # only what we wrote: another engine may have written since
            remove_endpoint_if_ours(self.endpoint_file, self._endpoint_written)
            self._endpoint_written = None

    # --- middlewares ---------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 413:
                return problem(413, "payload_too_large", f"request body over {MAX_BODY_BYTES} bytes")
            if exc.status == 404:
                return problem(404, "not_found", f"no such path: {request.path}")
            if exc.status == 405:
                return problem(
                    405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
                )
            if exc.status >= 400:
                return problem(exc.status, "http_error", exc.reason)
            raise
        except VramError as exc:
            return problem_from(exc)
        except Exception as exc:
            logger.exception("API handler failed")
            return problem(500, "internal_error", f"unexpected error: {type(exc).__name__}")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/metrics"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not given or not secrets.compare_digest(given, self.token):
            return problem(
                401,
                "unauthorized",
                "missing or wrong API token" if given else "missing API token",
                suggestions=[
                    f"Send 'Authorization: Bearer <token>' with the token from {paths.api_token_file()}"
                ],
            )
        return await handler(request)

    # --- handlers ------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        snap = self.steward.snapshot
        return web.json_response(
            {"ok": True, "version": __version__, "state": snap.state if snap else "starting"}
        )

    async def get_metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            return problem(404, "not_found", "metrics are not enabled")
        body = await asyncio.get_running_loop().run_in_executor(None, self.metrics)
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def status(self, request: web.Request) -> web.Response:
        snap = self.steward.snapshot
        if snap is None:
            return problem(503, "starting", "the engine has not sampled the GPU yet", retry_after=1)
        status = snap.to_status(self.steward.settings)
        status.setdefault("queue", self.reservations.queue_json())
        status.setdefault("reservations", self._ledger_reservations())
        return web.json_response(status)

    async def models(self, request: web.Request) -> web.Response:
        snap = self.steward.snapshot
        models = snap.models if snap else ()
        out = []
        for m in models:
            item = m.to_json()
            config = self.steward.settings.model(m.name)
            item["variants"] = list(config.variants) if config else []
            out.append(item)
        return web.json_response({"models": out})

    def _known_model(self, name: str) -> None:
        snap = self.steward.snapshot
        names = {m.name for m in snap.models} if snap else {m.name for m in self.steward.settings.models}
        if name not in names:
            raise InvalidInput(f"unknown model {name!r}; known: {', '.join(sorted(names)) or 'none'}")

    async def load(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._known_model(name)
        await self._body(request)
        try:  # the load's own outcome: done, or refused with the facts (never read from the event log)
            outcome = await self._run(Command(kind="load", model=name))
        except InsufficientVram as exc:
            if exc.retry_after_s is None:
                exc.retry_after_s = RETRY_AFTER_FOREIGN_S
            return problem_from(exc)
        model = outcome.model(name)
        return web.json_response({"model": model.to_json() if model else None}, status=202)

    async def unload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._known_model(name)
        await self._body(request)
        outcome = await self._run(Command(kind="unload", model=name))
        model = outcome.model(name)
        return web.json_response({"model": model.to_json() if model else None})

    async def verify(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._known_model(name)
        await self._body(request)
        outcome = await self._run(Command(kind="verify", model=name), timeout_s=VERIFY_TIMEOUT_S)
        facts = outcome.event.to_json() if outcome.event is not None else {}
        return web.json_response({"model": name, "verified": True, "result": facts})

    def command(self, kind: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            await self._body(request)
            outcome = await self._run(Command(kind=kind))  # type: ignore[arg-type]
            return web.json_response({"ok": True, "state": outcome.state, "reasons": list(outcome.reasons)})

        return handler

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        raw = await request.read()
        if not raw:  # no body; whitespace alone is not JSON
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        content_type = request.headers.get("Content-Type")
        if content_type is not None and not _is_json_type(request.content_type):
            raise UnsupportedMediaType(content_type)
        return body

    # --- reservations --------------------------------------------------------------------------

    async def list_reservations(self, request: web.Request) -> web.Response:
        return web.json_response({"reservations": self.reservations.active()})

    async def create_reservation(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        snap = self.steward.snapshot
        if snap is None:
            return problem(503, "starting", "the engine has not sampled the GPU yet", retry_after=1)
        gpus = {g.index: (g.total_bytes if g.total_bytes > 0 else None) for g in snap.telemetry.gpus}
        record = self.reservations.request(parse_reservation_request(body, gpus))
        _, position = self.reservations.get(record.id)
        status = 202 if record.state == ReservationState.WAITING else 201
        return web.json_response(
            self.reservations.to_json(record, position),
            status=status,
            headers={"Location": f"/v1/reservations/{record.id}"},
        )

    async def get_reservation(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        raw = request.query.get("wait_s")
        wait_s = parse_seconds(raw, "wait_s", MAX_LONG_POLL_S) if raw is not None else 0.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            self.reservations.pump()
            record, position = self.reservations.get(rid)
            remaining = deadline - loop.time()
            if record.state != ReservationState.WAITING or remaining <= 0:
                break
            await asyncio.sleep(min(LONG_POLL_STEP_S, remaining))
        if record.state == ReservationState.TIMED_OUT:
            return problem_from(self.reservations.timeout_error(record))
        return web.json_response(self.reservations.to_json(record, position))

    async def delete_reservation(self, request: web.Request) -> web.Response:
        record = self.reservations.release(request.match_info["id"])
        return web.json_response(self.reservations.to_json(record))

    async def reservation_allocated(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        self.reservations.get(rid)  # unknown ids are a 404 before the body is looked at
        await self._body(request)
        record = self.reservations.mark_allocated(rid)
        return web.json_response(self.reservations.to_json(record))

    def _after_tick(self, snapshot: StewardSnapshot) -> None:
        """Runs on the engine's thread after every tick: VRAM may have come free for the queue."""
        if self.reservations.has_waiters():
            self.reservations.pump()

    def _ledger_reservations(self) -> list[dict[str, Any]]:
        now = self.steward.clock()
        ledgers = self.steward.ledgers
        return [
            {
                "id": r.id,
                "gpu": r.gpu,
                "bytes": r.nbytes,
                "holder": r.holder,
                "allocated": r.allocated_at is not None,
                "expires_in_s": None if r.expires_at is None else max(r.expires_at - now, 0.0),
            }
            for index in ledgers
            for r in ledgers[index].reservations()
        ]

    async def _run(self, command: Command, *, timeout_s: float = COMMAND_TIMEOUT_S) -> Outcome:
        future = self.steward.submit(command)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            return_problem = VramError(
                "the engine did not answer in time", suggestions=["Check the log; the engine may be stuck"]
            )
            return_problem.http_status = 504
            raise return_problem from None


class UnsupportedMediaType(VramError):
    code = "unsupported_media_type"
    http_status = 415

    def __init__(self, content_type: str) -> None:
        super().__init__(
            f"request body has Content-Type {content_type!r}; expected application/json",
            details={"content_type": content_type},
            suggestions=["Send the body as JSON with 'Content-Type: application/json'"],
        )


def _is_json_type(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
