"""Who listens on a local TCP port: the owner uid of its LISTEN socket, from /proc/net/tcp and /proc/net/tcp6.

The client asks before it sends the API token over TCP: an endpoint file left by a killed engine names a port
that another user's program may hold now, and the token must not go there (`PortNotOurs`). The kernel
writes the socket's owner (the uid of the process that created it) in the `uid` column; nothing a listener
does can change it. Where /proc/net is not there (not Linux), `listening_uids()` returns None and the client
relies on the endpoint file's pid check alone.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from app.core.errors import VramError

PROC_NET = Path("/proc/net")
LISTEN = "0A"  # the `st` column of a socket in the LISTEN state


class PortNotOurs(VramError):
    """The endpoint's TCP port is held by a program of another user: the token is not sent there."""

    code = "endpoint_port_not_ours"

    def __init__(self, host: str, port: int, uids: set[int], endpoint_file: Path | None) -> None:
        owners = ", ".join(_user_name(uid) for uid in sorted(uids))
        where = f" named in {endpoint_file}" if endpoint_file is not None else ""
        super().__init__(
            f"the API port {host}:{port}{where} is held by {owners}, not by you: not sending the API token "
            "there (a leftover endpoint file of an engine that was killed, and another program took its "
            "port)",
            details={"host": host, "port": port, "owner_uids": sorted(uids)},
            suggestions=[
                "Start VRAM Steward again (`vram-steward daemon` or the tray app): it writes a new endpoint "
                "file and a new token",
                f"See which program holds the port: `ss -ltnp 'sport = :{port}'`",
            ],
        )


def _user_name(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp's address: the bytes of the address in the kernel's (host, little-endian) word order."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return ipaddress.IPv6Address(words)


def listening_uids(port: int, host: str | None = None, *, proc_net: Path = PROC_NET) -> set[int] | None:
    """The uids owning a LISTEN socket on `port` (on `host`'s address or a wildcard one, when `host` is an
    address); an empty set when nothing listens; None when /proc/net cannot be read."""
    wanted: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        wanted = ipaddress.ip_address(host.strip("[]")) if host else None
    except ValueError:
        wanted = None  # a name: any listener on the port counts
    uids: set[int] = set()
    readable = False
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != LISTEN:
                continue
            address_hex, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            address = _address(address_hex)
            if wanted is not None and not address.is_unspecified and not _same(address, wanted):
                continue
            uids.add(int(fields[7]))
    return uids if readable else None


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _plain(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _same(a: Address, b: Address) -> bool:
    return _plain(a) == _plain(b)


def check_port_is_ours(host: str, port: int, *, endpoint_file: Path | None = None) -> None:
    """Raise PortNotOurs when a program of another user listens on `port`. Nothing listening, or no
    /proc/net to ask, passes: the connection then fails, or the pid check was all there is."""
    if not hasattr(os, "getuid"):  # pragma: no cover - not on POSIX
        return
    if host in ("0.0.0.0", "::", "[::]"):
        host = ""
    uids = listening_uids(port, host or None)
    if not uids:
        return
    others = {uid for uid in uids if uid != os.getuid()}
    if others:
        raise PortNotOurs(host or "127.0.0.1", port, others, endpoint_file)
