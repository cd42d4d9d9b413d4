"""How `StewardClient` reaches the engine: its Unix socket (the default), else TCP, plain on loopback or TLS
with a pinned certificate when the API is remote.

- **Unix socket** (`UnixChannel`): the path from the endpoint file, in the private runtime folder. The engine
  asks the kernel who connected (SO_PEERCRED) and answers only its own user, so no token is sent.
- **TCP** (`TcpChannel`): with the bearer token. Before each connection to a loopback port the client checks
  that the listening socket belongs to this user (/proc/net/tcp: app/core/api/port_owner.py), so a port
  that another user's program took after the engine died never gets the token. With `https`, the server's
  certificate must have the pinned SHA-256 fingerprint (from the endpoint file or the caller), or verify
  against a CA file the caller names; the check is made before a byte of the request is sent.

Plain `http.client`: no proxy is ever consulted (urllib would honour http_proxy and send the token there).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from app.core.api.port_owner import check_port_is_ours
from app.core.api.tls import fingerprint_of_der, normalize_fingerprint
from app.core.errors import VramError
from app.core.loopback import is_loopback


class CertificateMismatch(VramError):
    """The TLS server's certificate is not the pinned one: the token is not sent."""

    code = "certificate_mismatch"

    def __init__(self, where: str, expected: str, got: str) -> None:
        super().__init__(
            f"the server at {where} presented a certificate with fingerprint {got}, not the expected "
            f"{expected}: not sending the API token (someone on the network may be standing in for VRAM "
            "Steward)",
            details={"expected": expected, "got": got},
            suggestions=[
                "Compare with the fingerprint `vram-steward status` prints on the machine that runs it; pass "
                "the right one (StewardClient(fingerprint=...))"
            ],
        )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _PinnedHttpsConnection(http.client.HTTPSConnection):
    """HTTPS whose server must present the certificate with `fingerprint` (no CA, no host name check)."""

    def __init__(self, host: str, port: int, timeout_s: float, fingerprint: str) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # verified below, by fingerprint, before anything is sent
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(host, port, timeout=timeout_s, context=context)
        self._fingerprint = fingerprint

    def connect(self) -> None:
        super().connect()
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True)
        got = fingerprint_of_der(der) if der else "none"
        if got != self._fingerprint:
            self.sock.close()
            raise CertificateMismatch(f"{self.host}:{self.port}", self._fingerprint, got)


class Channel:
    kind: str = ""
    needs_token: bool = True

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass
class UnixChannel(Channel):
    path: str
    kind: str = "unix"
    needs_token: bool = False

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        return _UnixConnection(self.path, timeout_s)

    def describe(self) -> str:
        return f"unix socket {self.path}"


@dataclass
class TcpChannel(Channel):
    base_url: str
    fingerprint: str | None = None  # "sha256:..." to pin (https)
    ca_file: Path | None = None  # or verify against this CA (https, host name checked)
    endpoint_file: Path | None = None  # named in PortNotOurs
    kind: str = "tcp"
    needs_token: bool = True

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {self.base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        if self.fingerprint:
            self.fingerprint = normalize_fingerprint(self.fingerprint)

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        if is_loopback(self.host):
            check_port_is_ours(self.host, self.port, endpoint_file=self.endpoint_file)
        if self.scheme == "http":
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        if self.fingerprint:
            return _PinnedHttpsConnection(self.host, self.port, timeout_s, self.fingerprint)
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout_s, context=context)

    def describe(self) -> str:
        return self.base_url
