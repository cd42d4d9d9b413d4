"""The local HTTP API: the one control channel (CLI commands, the tray's single-instance hand-off, clients).

Loopback only unless the user sets `allow_remote_api`; every endpoint except /healthz and /metrics needs the
bearer token kept in a file only the user can read (0600). Errors are problem JSON (errors.py). Served by
aiohttp on the asyncio thread; handlers never touch the engine's state, they submit commands and read the
latest immutable snapshot.
"""

from __future__ import annotations

import asyncio
import ipaddress
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
from app.core.errors import InvalidInput, VramError
from app.core.policy.contention import Command
from app.core.steward import Steward

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
COMMAND_TIMEOUT_S = 10.0


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
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        self.app = web.Application(middlewares=[self._errors, self._auth], client_max_size=MAX_BODY_BYTES)
        self._routes()
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    def _routes(self) -> None:
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.get_metrics)
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/models", self.models)
        r.add_post("/v1/models/{name}/load", self.load)
        r.add_post("/v1/models/{name}/unload", self.unload)
        r.add_post("/v1/pause", self.command("pause"))
        r.add_post("/v1/resume", self.command("resume"))
        r.add_post("/v1/evict", self.command("evict_now"))
        r.add_post("/v1/show", self.command("show"))

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []  # noqa: SLF001 (aiohttp exposes no getter)
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        if self.endpoint_file is not None:
            write_endpoint(self.endpoint_file, self.host, self.bound_port)
        logger.info("API listening on http://%s:%s", self.host, self.bound_port)
        return self.bound_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.endpoint_file is not None:
            try:
                self.endpoint_file.unlink()
            except FileNotFoundError:
                pass

    # --- middlewares ---------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 413:
                return problem(413, "payload_too_large", f"request body over {MAX_BODY_BYTES} bytes")
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
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def status(self, request: web.Request) -> web.Response:
        snap = self.steward.snapshot
        if snap is None:
            return problem(503, "starting", "the engine has not sampled the GPU yet", retry_after=1)
        return web.json_response(snap.to_status(self.steward.settings))

    async def models(self, request: web.Request) -> web.Response:
        snap = self.steward.snapshot
        models = snap.models if snap else ()
        return web.json_response({"models": [m.to_json() for m in models]})

    def _known_model(self, name: str) -> None:
        snap = self.steward.snapshot
        names = {m.name for m in snap.models} if snap else {m.name for m in self.steward.settings.models}
        if name not in names:
            raise InvalidInput(f"unknown model {name!r}; known: {', '.join(sorted(names)) or 'none'}")

    async def load(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._body(request)
        self._known_model(name)
        snap = await self._run(Command(kind="load", model=name))
        model = next((m for m in snap.models if m.name == name), None)
        refused = [
            e
            for e in snap.recent_events
            if e.kind == "LoadRefused"
            and getattr(e, "model", None) == name
            and e.at >= snap.telemetry.taken_at
        ]
        if refused:
            event = refused[-1]
            return problem(
                507 if getattr(event, "reason", "") == "insufficient_vram" else 409,
                getattr(event, "reason", "load_refused"),
                f"loading {name} was refused: {getattr(event, 'reason', '')}",
                need_bytes=getattr(event, "need_bytes", None),
                available_bytes=getattr(event, "available_bytes", None),
            )
        return web.json_response({"model": model.to_json() if model else None}, status=202)

    async def unload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._body(request)
        self._known_model(name)
        snap = await self._run(Command(kind="unload", model=name))
        model = next((m for m in snap.models if m.name == name), None)
        return web.json_response({"model": model.to_json() if model else None})

    def command(self, kind: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            await self._body(request)
            snap = await self._run(Command(kind=kind))  # type: ignore[arg-type]
            return web.json_response({"ok": True, "state": snap.state, "reasons": list(snap.reasons)})

        return handler

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        return body

    async def _run(self, command: Command) -> Any:
        future = self.steward.submit(command)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), COMMAND_TIMEOUT_S)
        except TimeoutError:
            return_problem = VramError(
                "the engine did not answer in time", suggestions=["Check the log; the engine may be stuck"]
            )
            return_problem.http_status = 504
            raise return_problem from None


def write_endpoint(path: Path, host: str, port: int) -> None:
    """Atomically record where the API listens, so `vram-steward evict` finds the running instance."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"host": host, "port": port, "pid": os.getpid()}, f)
    os.replace(tmp, path)


def read_endpoint(path: Path | None = None) -> tuple[str, int] | None:
    path = path or paths.api_endpoint_file()
    try:
        data = json.loads(path.read_text())
        return str(data["host"]), int(data["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
