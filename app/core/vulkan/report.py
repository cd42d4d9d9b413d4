"""The layer's protocol (docs/vulkan-layer.md): one JSON line from the layer, one line back from us.

    -> {"v": 1, "pid": 4242, "timeout_ms": 750, "exe": "/usr/bin/wine64-preloader",
        "device": "NVIDIA GeForce RTX 4090", "uuid": "GPU-...", "api_version": "1.3",
        "cmdline": ["C:\\\\Games\\\\Cyberpunk2077.exe", "--launcher-skip"]}
    <- {"go": true, "waited_ms": 140}

`uuid` is absent when the application's instance is Vulkan 1.0 (vkGetPhysicalDeviceProperties2 is not
allowed there). The pid we act on is the kernel's (SO_PEERCRED), never the one in the line."""

from __future__ import annotations

import json
import os
import socket
import struct
from dataclasses import dataclass

MAX_LINE_BYTES = 64 * 1024  # the layer sends at most 16 KiB; a longer line is not the layer's
MAX_LAYER_TIMEOUT_MS = 5000  # the layer's own cap (VRAM_STEWARD_LAYER_TIMEOUT_MS)
DEFAULT_LAYER_TIMEOUT_MS = 750


@dataclass(frozen=True)
class LayerReport:
    pid: int  # as the layer saw it (informational: the peer's pid from the kernel is what counts)
    exe: str
    cmdline: tuple[str, ...]
    device: str
    uuid: str | None  # NVML's form, "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    timeout_ms: int  # how long the layer waits for our answer


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def parse_report(line: bytes) -> LayerReport:
    """A report from one line; ValueError when it is not one."""
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"report longer than {MAX_LINE_BYTES} bytes")
    data = json.loads(line.decode("utf-8", errors="replace"))
    if not isinstance(data, dict) or data.get("v") != 1:
        raise ValueError("not a version 1 report")
    pid, timeout_ms = data.get("pid"), data.get("timeout_ms", DEFAULT_LAYER_TIMEOUT_MS)
    if not isinstance(pid, int) or not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool):
        raise ValueError("pid and timeout_ms must be integers")
    cmdline = data.get("cmdline", [])
    if not isinstance(cmdline, list) or not all(isinstance(arg, str) for arg in cmdline):
        raise ValueError("cmdline must be a list of strings")
    uuid = data.get("uuid")
    return LayerReport(
        pid=pid,
        exe=str(data.get("exe") or ""),
        cmdline=tuple(cmdline),
        device=str(data.get("device") or ""),
        uuid=uuid if isinstance(uuid, str) and uuid else None,
        timeout_ms=max(0, min(timeout_ms, MAX_LAYER_TIMEOUT_MS)),
    )


def answer_line(waited_ms: float) -> bytes:
    return json.dumps({"go": True, "waited_ms": round(waited_ms)}).encode() + b"\n"


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The connecting process's pid, uid and gid, from the kernel (Linux SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def may_report(peer: PeerCredentials, own_uid: int | None = None) -> bool:
    """Only this user's processes may report: another user's report could evict our models at will."""
    return peer.pid > 0 and peer.uid == (os.getuid() if own_uid is None else own_uid)
