"""Who is on the other end of an API connection: the channel (Unix socket or TCP), and what vouches for it.

On the Unix socket the kernel tells the peer's pid, uid and gid (`SO_PEERCRED`): nothing the client says can
change them. On TCP there is only the remote address. `Peer.identity` is what the reservation book counts as
one client (per-client caps): `unix:pid=<pid>` or `tcp:<address>`; a client may add its own name with the
body's `client` field (`tcp:127.0.0.1/my-server`), which separates well-behaved clients that share an
address, never a hostile one from the global caps.

No aiohttp import at module level: the transport is only asked for its socket.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Literal

Channel = Literal["unix", "tcp"]

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Peer:
    channel: Channel
    address: str  # the remote IP on TCP; "" on the Unix socket
    pid: int | None = None  # from the kernel, Unix socket only
    uid: int | None = None
    gid: int | None = None

    @property
    def identity(self) -> str:
        if self.channel == "unix":
            return f"unix:pid={self.pid}" if self.pid is not None else "unix"
        return f"tcp:{self.address}"

    @property
    def same_user(self) -> bool:
        """A Unix-socket peer running as this process's user (the kernel says so). Always False on TCP."""
        return self.channel == "unix" and self.uid is not None and self.uid == _own_uid()


def _own_uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def peer_credentials(sock: Any) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a connected Unix socket's peer, from the kernel; None where SO_PEERCRED is not
    available (not Linux) or the socket is gone."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # pragma: no cover - not on Linux
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size)
    except (OSError, AttributeError):
        return None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def peer_of(transport: Any, remote: str | None) -> Peer:
    """The peer of a request, from its transport (`request.transport`) and `request.remote`."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    family = getattr(sock, "family", None)
    if family is not None and family == getattr(socket, "AF_UNIX", None):
        creds = peer_credentials(sock)
        if creds is None:
            return Peer(channel="unix", address="")
        pid, uid, gid = creds
        return Peer(channel="unix", address="", pid=pid, uid=uid, gid=gid)
    return Peer(channel="tcp", address=remote or "")
