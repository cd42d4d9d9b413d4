"""The endpoint file (`paths.api_endpoint_file()`): where the running engine's API listens.

The engine that starts the API writes `{"host", "port", "pid", "written_at", "socket", "tls_fingerprint"}`
(atomically, 0600); the CLI and `StewardClient` read it to find the engine: `socket` is the API's Unix socket
(the CLI's default channel; null when there is none), `tls_fingerprint` the SHA-256 of the certificate the
TCP port serves (remote API only; null: plain HTTP on loopback). Rules that keep two processes from
confusing each other:
- only the process that wrote the file removes it, and only while it still holds what that process wrote
  (`remove_endpoint_if_ours`), so a second process exiting never deletes the first one's endpoint;
- a file whose writer has exited (killed, crashed) is stale: `read_live_endpoint` refuses it, so the token
  is never sent to whatever program listens on that port now.

No aiohttp here: the CLI imports this module without the server.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core import paths
from app.core.atomic import write_atomic
from app.core.errors import VramError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    pid: int | None
    written_at: float | None
    socket: str | None = None  # the Unix socket's path
    tls_fingerprint: str | None = None  # "sha256:<hex>" when the TCP port speaks TLS

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):  # listening everywhere: this machine reaches it on loopback
            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        scheme = "https" if self.tls_fingerprint else "http"
        return f"{scheme}://{host}:{self.port}"


def api_socket_file() -> Path:
    """The API's Unix socket, in the private runtime folder (app.core.instance.private_runtime_dir)."""
    return paths.runtime_dir() / "api.sock"


class StaleEndpoint(VramError):
    """The endpoint file names a process that has exited: whatever listens on its port now is not ours."""

    code = "stale_endpoint"

    def __init__(self, path: Path, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        super().__init__(
            f"the endpoint file {path} is a leftover of pid {endpoint.pid}, which has exited; "
            f"not sending the API token to whatever listens on {endpoint.host}:{endpoint.port} now",
            details={"endpoint_file": str(path), "pid": endpoint.pid, "port": endpoint.port},
        )


class ApiPortUnavailable(VramError):
    """The API could not listen on host:port (taken by another program, a privileged port, not local)."""

    code = "api_port_unavailable"

    def __init__(self, host: str, port: int, cause: OSError, *, config_file: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.cause = cause
        where = f"{host}:{port}"
        if cause.errno == errno.EADDRINUSE:
            why = f"the port {where} is already in use by another program"
        elif cause.errno == errno.EACCES:
            why = f"this user may not listen on {where} (ports below 1024 need privileges)"
        elif cause.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine"
        else:
            why = f"listening on {where} failed: {cause.strerror or cause}"
        in_file = f" in {config_file}" if config_file is not None else " in the config file"
        super().__init__(
            f"The local API cannot start: {why}. Without it `vram-steward status|pause|resume|evict` "
            "and API clients cannot reach this engine.",
            details={"host": host, "port": port, "errno": cause.errno, "config_key": "api_port"},
            suggestions=[
                f"Set `api_port` to a free port{in_file}, or `api_port = 0` to take any free port: the port "
                f"chosen is written to {paths.api_endpoint_file()}, where the CLI and clients find it",
                f"See which program holds it: `ss -ltnp 'sport = :{port}'`",
            ],
        )


def write_endpoint(
    path: Path, host: str, port: int, *, socket: Path | None = None, tls_fingerprint: str | None = None
) -> dict[str, Any]:
    """Atomically record where the API listens; returns the record written (for remove_endpoint_if_ours)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "host": host,
        "port": port,
        "pid": os.getpid(),
        "written_at": time.time(),
        "socket": str(socket) if socket is not None else None,
        "tls_fingerprint": tls_fingerprint,
    }
    write_atomic(path, json.dumps(record), mode=0o600)
    return record


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_endpoint_record(path: Path | None = None) -> Endpoint | None:
    """The endpoint file as written, live or not; None when missing or unreadable."""
    data = _load(path or paths.api_endpoint_file())
    if data is None:
        return None
    try:
        pid = data.get("pid")
        written = data.get("written_at")
        sock = data.get("socket")
        fingerprint = data.get("tls_fingerprint")
        return Endpoint(
            host=str(data["host"]),
            port=int(data["port"]),
            pid=int(pid) if pid is not None else None,
            written_at=float(written) if written is not None else None,
            socket=str(sock) if sock else None,
            tls_fingerprint=str(fingerprint) if fingerprint else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_live_endpoint(path: Path | None = None) -> Endpoint | None:
    """The endpoint of a running engine; None when there is no file; raises StaleEndpoint when the process
    that wrote it has exited (or its pid now belongs to a newer process)."""
    from app.core.instance import pid_alive_since

    path = path or paths.api_endpoint_file()
    endpoint = read_endpoint_record(path)
    if endpoint is None:
        return None
    if endpoint.pid is not None and not pid_alive_since(endpoint.pid, endpoint.written_at):
        raise StaleEndpoint(path, endpoint)
    return endpoint


def read_endpoint(path: Path | None = None) -> tuple[str, int] | None:
    """(host, port) from the endpoint file, live or not; None when missing or unreadable."""
    endpoint = read_endpoint_record(path)
    return (endpoint.host, endpoint.port) if endpoint is not None else None


def remove_endpoint_if_ours(path: Path, written: dict[str, Any] | None) -> bool:
    """Remove the endpoint file only when it still holds exactly what this process wrote (`written`, from
    write_endpoint): another engine may have written its own since. True when removed."""
    if written is None:
        return False
    current = _load(path)
    if current != written:
        if current is not None:
            logger.info("endpoint file %s now belongs to pid %s: left in place", path, current.get("pid"))
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
