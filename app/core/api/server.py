"""The local HTTP API: the one control channel (CLI commands, the tray's single-instance hand-off, clients).

Loopback only unless the user sets `allow_remote_api`; every endpoint except /healthz and /metrics needs the
bearer token kept in a file only the user can read (0600, a new one at every start: app/core/api/token.py).
Errors are problem JSON (errors.py). Served by aiohttp on the asyncio thread; handlers never touch the
engine's state, they submit commands and read the latest immutable snapshot.

Defences against other local users, web pages and (with allow_remote_api) LAN peers, docs/api.md "Security":
- the Host header must name this server (127.0.0.1, localhost, [::1] or the bound address, with the port),
  on every path, so a web page that rebinds its DNS name to 127.0.0.1 reads nothing (421);
- a connection that has not sent a whole request within KEEPALIVE_S of connecting (or of its last answer)
  is closed, and a body must arrive within BODY_TIMEOUT_S, so silent or trickling sockets cannot use up
  the process's file descriptors;
- hostile input (non-ASCII tokens, deep JSON, numbers thousands of digits long) gets a 4xx problem;
- with allow_remote_api, /healthz and /metrics need the token too unless the peer is on loopback, and the
  TCP port speaks TLS only (a user certificate or a self-signed one whose fingerprint clients pin: tls.py);
- the same app is served on a Unix socket in the private runtime folder (0600 in a 0700 folder), where the
  kernel tells the peer's uid (SO_PEERCRED): only this user is answered, and there the token is not needed
  (anyone who runs as this user can read the token file anyway);
- each listener keeps a bounded number of connections (listeners.py); one more gets a 503 at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from app import __version__
from app.core import paths
from app.core.api.endpoint import ApiPortUnavailable, remove_endpoint_if_ours, write_endpoint
from app.core.api.listeners import CappedSite, bind_unix_socket, remove_unix_socket_if_ours
from app.core.api.peer import Peer, peer_of
from app.core.api.schema import MAX_LONG_POLL_S, openapi_document
from app.core.api.tls import TlsIdentity, tls_identity
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
KEEPALIVE_S = 5.0  # a connection with no whole request this long after connecting or answering is closed
BODY_TIMEOUT_S = 10.0  # the most a request body may take to arrive (64 KiB)
MAX_JSON_DEPTH = 32  # request bodies are flat objects; anything deeper is an attack or a mistake
MAX_NUMBER_DIGITS = 40  # longer integer literals are read as TooLongNumber (and refused by the field check)
OPEN_FILES_WANTED = 65_536  # the soft RLIMIT_NOFILE raised toward this at start (never above the hard one)
MAX_TCP_CONNECTIONS = 256  # open at once on the TCP port (other local users can connect there)
MAX_UNIX_CONNECTIONS = 64  # open at once on the Unix socket (this user's CLI and clients)
SPARE_FILES = 32  # descriptors kept for everything else (logs, pipes, NVML, model servers)


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


class TooLongNumber:
    """An integer literal of more than MAX_NUMBER_DIGITS digits in a request body: kept as its length only
    (converting it costs quadratic time, and Python refuses past 4300 digits), so the field check names
    the field instead of the parser failing."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"a whole number of {self.digits} digits"


def _parse_int(text: str) -> int | TooLongNumber:
    return int(text) if len(text) <= MAX_NUMBER_DIGITS else TooLongNumber(len(text.lstrip("-")))


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed body (iterative: no recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _raise_open_file_limit() -> int | None:
    """Raise the soft open-file limit toward the hard one: each API connection costs a descriptor, and
    the usual soft limit (1024) is far below what the kernel allows this user. Returns the soft limit now
    (None: unlimited or unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            logger.debug("could not raise the open-file limit from %d: %s", soft, exc)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def connection_caps(open_files: int | None, with_unix: bool) -> tuple[int, int]:
    """(TCP cap, Unix-socket cap): the defaults, cut so that both together leave SPARE_FILES descriptors
    (and a listen backlog) under the open-file limit; never below 8 each."""
    unix = MAX_UNIX_CONNECTIONS if with_unix else 0
    if open_files is None:
        return MAX_TCP_CONNECTIONS, unix
    room = max(open_files - SPARE_FILES, 16)
    unix = min(unix, room // 2) if with_unix else 0
    tcp = min(MAX_TCP_CONNECTIONS, room - unix)
    return max(tcp, 8), max(unix, 8) if with_unix else 0


def _url_host(host: str) -> str:
    """A host as it appears in a URL and a Host header ("::1" -> "[::1]"), lower case."""
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return False
    return True


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PEER = web.RequestKey("peer", Peer)  # who is calling, set by the first middleware


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
        unix_socket: Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        if not is_loopback(host) and not allow_remote:
            raise InvalidInput(
                f"refusing to serve the API on {host}: only loopback addresses are allowed unless "
                "allow_remote_api = true is set in the config",
                field_name="api_host",
                value=host,
            )
        self.tls: TlsIdentity | None = None
        if not is_loopback(host):  # remote: TLS or nothing (TlsUnavailable says what to fix)
            self.tls = tls_identity(tls_cert, tls_key, host)
            logger.warning(
                "the API listens on %s, reachable from other machines (allow_remote_api): TLS only, "
                "certificate %s (%s), fingerprint %s; /healthz and /metrics need the token from other "
                "machines",
                host,
                self.tls.cert_file,
                "self-signed" if self.tls.self_signed else "yours",
                self.tls.fingerprint,
            )
        self.unix_socket = unix_socket
        self._unix_identity: tuple[int, int] | None = None
        self.sites: list[CappedSite] = []
        self.steward = steward
        self.host = host
        self.port = port
        self.token = token
        self.allow_remote = allow_remote and not is_loopback(host)
        self._allowed_hosts: frozenset[str] = frozenset()  # Host header values, set once the port is known
        self.endpoint_file = endpoint_file
        self.metrics = metrics
        # GET /v1/discovered: the discovery watcher's report (set by the wiring; None: discovery is off)
        self.discovery_report: Callable[[], dict[str, Any]] | None = None
        self.reservations = ReservationBook(steward.ledgers, clock=steward.clock)
        self.app = web.Application(
            middlewares=[self._errors, self._check_peer, self._check_host, self._auth],
            client_max_size=MAX_BODY_BYTES,
        )
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
        r.add_get("/v1/discovered", self.discovered)
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
        tcp_cap, unix_cap = connection_caps(_raise_open_file_limit(), self.unix_socket is not None)
        # keepalive_timeout also runs from the moment a connection opens: one that sends no whole request
        # in time (silent, or trickling its headers) is closed, as is an idle keep-alive connection
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=KEEPALIVE_S)
        await self._runner.setup()
        ssl_context = self.tls.server_context() if self.tls is not None else None
        site = CappedSite(
            self._runner, host=self.host, port=self.port, max_connections=tcp_cap, ssl_context=ssl_context
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ApiPortUnavailable(self.host, self.port, exc) from exc
        self.sites = [site]
        if self.unix_socket is not None:
            await self._start_unix(unix_cap)
        self.steward.subscribe_snapshots(self._after_tick)
        self.bound_port = site.bound_port or self.port
        self._allowed_hosts = self._host_names(self.bound_port)
        if self.endpoint_file is not None:
            self._endpoint_written = write_endpoint(
                self.endpoint_file,
                self.host,
                self.bound_port,
                socket=self.unix_socket if self._unix_identity is not None else None,
                tls_fingerprint=self.tls.fingerprint if self.tls is not None else None,
            )
        scheme = "https" if self.tls is not None else "http"
        logger.info(
            "API listening on %s://%s:%s%s",
            scheme,
            self.host,
            self.bound_port,
            f" and on {self.unix_socket}" if self._unix_identity is not None else "",
        )
        return self.bound_port

    async def _start_unix(self, max_connections: int) -> None:
        """The Unix socket, 0600 in the private runtime folder. Not fatal: TCP serves on without it."""
        assert self._runner is not None and self.unix_socket is not None
        from app.core.instance import private_runtime_dir

        try:
            private_runtime_dir(self.unix_socket.parent)
            sock, self._unix_identity = bind_unix_socket(self.unix_socket)
            site = CappedSite(self._runner, sock=sock, max_connections=max_connections)
            await site.start()
        except (OSError, VramError) as exc:
            logger.warning(
                "the API's Unix socket %s cannot be used (%s): clients use TCP", self.unix_socket, exc
            )
            remove_unix_socket_if_ours(self.unix_socket, self._unix_identity)
            self._unix_identity = None
            return
        self.sites.append(site)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.unix_socket is not None:
            remove_unix_socket_if_ours(self.unix_socket, self._unix_identity)
            self._unix_identity = None
        if self.endpoint_file is not None:  # only what we wrote: another engine may have written since
            remove_endpoint_if_ours(self.endpoint_file, self._endpoint_written)
            self._endpoint_written = None

    def _host_names(self, port: int) -> frozenset[str]:
        names = {"127.0.0.1", "localhost", "[::1]", _url_host(self.host)}
        if self.allow_remote:
            names.add(socket.gethostname().lower())
        return frozenset(f"{name}:{port}" for name in names)

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request's Host header names this server. A web page that rebinds its own DNS name to
        127.0.0.1 sends that name, never one of these. With allow_remote_api, any IP address with our port
        is also accepted (a literal address cannot be rebound) and so is this machine's host name."""
        if not host_header:
            return False
        value = host_header.strip().lower()
        if value in self._allowed_hosts:
            return True
        name, _, port = value.rpartition(":")
        return self.allow_remote and port == str(self.bound_port) and _is_ip_literal(name)

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
    async def _check_peer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Who is calling (peer.py); on the Unix socket, only this user (the kernel's word, SO_PEERCRED)."""
        peer = peer_of(request.transport, request.remote)
        request[PEER] = peer
        # no credentials (no SO_PEERCRED on this platform): not refused, but the token is needed (_auth)
        if peer.channel == "unix" and peer.uid is not None and not peer.same_user:
            return problem(
                403,
                "peer_not_allowed",
                f"this socket answers only its owner's processes; the peer runs as uid {peer.uid}",
                details={"uid": peer.uid, "pid": peer.pid},
                suggestions=["Run the client as the user who runs VRAM Steward"],
            )
        return await handler(request)

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if request[PEER].channel == "unix":  # no browser reaches a Unix socket: no DNS rebinding there
            return await handler(request)
        if not self.host_allowed(host):
            return problem(
                421,
                "host_not_allowed",
                f"this server answers only requests for {', '.join(sorted(self._allowed_hosts))}; "
                f"the Host header says {host!r}",
                details={"host": host},
                suggestions=[
                    f"Connect to http://127.0.0.1:{self.bound_port} (the address in api-endpoint.json)"
                ],
            )
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request[PEER].same_user:  # the kernel vouches for the user: the token would add nothing
            return await handler(request)
        if request.path in ("/healthz", "/metrics") and (
            not self.allow_remote or is_loopback(request.remote or "")
        ):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        # isascii first: compare_digest refuses non-ASCII str with a TypeError (a 500 for anyone)
        if not given or not given.isascii() or not secrets.compare_digest(given, self.token):
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

    async def discovered(self, request: web.Request) -> web.Response:
        """The AI apps discovery found on loopback, managed or not (docs/servers.md, "Finding apps")."""
        if self.discovery_report is None:  # a simulation, or discovery not wired
            return web.json_response({"enabled": False, "last_run_at": None, "apps": []})
        return web.json_response({"enabled": True, **self.discovery_report()})

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
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                raw = await request.read()
        except TimeoutError:
            raise RequestTimeout() from None
        if not raw:  # no body; whitespace alone is not JSON
            return {}
        try:
            body = json.loads(raw, parse_int=_parse_int)
        except RecursionError:
            raise InvalidInput(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
        if _depth(body) > MAX_JSON_DEPTH:
            raise InvalidInput(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
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
        req = parse_reservation_request(body, gpus)
        peer = request[PEER]
        client = f"{peer.identity}/{req.client}" if req.client else peer.identity
        record = self.reservations.request(dataclasses.replace(req, client=client))
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


class RequestTimeout(VramError):
    code = "request_timeout"
    http_status = 408

    def __init__(self) -> None:
        super().__init__(
            f"the request body did not arrive within {BODY_TIMEOUT_S:g} s",
            suggestions=["Send the whole body at once (it is at most 64 KiB)"],
        )


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
