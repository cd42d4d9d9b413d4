"""The status document: what `vram-steward status --json` prints and the API's /v1/status returns.

Its fields are documented in docs/status-json.md. Fields are added, never renamed; SCHEMA_VERSION moves
when a field changes meaning.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.core.events import Event
from app.core.gpu.snapshot import GpuSnapshot, GpuState, TelemetrySnapshot
from app.core.holders import ModelStatus
from app.core.settings import Settings
from app.core.units import format_bytes, format_usage

SCHEMA_VERSION = 1
BAR_WIDTH = 20


def build_status(
    telemetry: TelemetrySnapshot,
    *,
    settings: Settings | None = None,
    models: Sequence[ModelStatus] = (),
    events: Sequence[Event] = (),
    roles: Mapping[tuple[int, int], str] | None = None,
    state: str | None = None,
    extra: Mapping[str, object] | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The status document for one telemetry snapshot plus what the engine knows (models, events, roles).

    `roles` maps (gpu index, pid) to a role ("self", "managed", "desktop", "game", "other"); a process
    without one gets null. `state` is the engine's state (null without an engine). `extra` adds top-level
    fields; it may not replace the ones defined here.
    """
    status: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "backend": telemetry.backend,
        "backend_state": str(telemetry.state),
        "message": telemetry.message,
        "state": state,
        "taken_at": telemetry.taken_at,
        "driver_version": telemetry.driver_version,
        "game_signals": list(telemetry.game_signals),
        "gpus": [_gpu_json(gpu, settings, roles or {}) for gpu in telemetry.gpus],
        "models": [m.to_json() for m in models],
        "events": [e.to_json() for e in events],
        "generated_at": datetime.datetime.fromtimestamp(wall_clock(), tz=datetime.UTC).isoformat(),
    }
    for key, value in (extra or {}).items():
        if key in status:
            raise ValueError(f"build_status: extra field {key!r} would replace a defined status field")
        status[key] = value
    return status


def _gpu_json(
    gpu: GpuSnapshot, settings: Settings | None, roles: Mapping[tuple[int, int], str]
) -> dict[str, Any]:
    processes = []
    for process in gpu.processes:
        item = process.to_json()
        item["role"] = roles.get((gpu.index, process.pid))
        processes.append(item)
    return {
        "index": gpu.index,
        "name": gpu.name,
        "uuid": gpu.uuid,
        "state": str(gpu.state),
        "message": gpu.message,
        "total_bytes": gpu.total_bytes,
        "used_bytes": gpu.used_bytes,
        "free_bytes": gpu.free_bytes,
        "reserved_bytes": gpu.reserved_bytes,
        "headroom_bytes": settings.headroom_bytes(gpu.total_bytes) if settings is not None else None,
        "temperature_c": gpu.temperature_c,
        "utilization_percent": gpu.utilization_percent,
        "unavailable": dict(gpu.unavailable),
        "processes": processes,
    }


# --- for people ------------------------------------------------------------------------------------


def usage_bar(used_bytes: int, total_bytes: int, width: int = BAR_WIDTH) -> str:
    """`[#####...............]`: the share of total VRAM in use."""
    filled = 0 if total_bytes <= 0 else round(width * min(max(used_bytes / total_bytes, 0.0), 1.0))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def format_status_table(status: Mapping[str, Any]) -> str:
    """The status document as text for a terminal: per GPU a usage bar, then its processes."""
    lines: list[str] = []
    gpus = status.get("gpus") or []
    message = status.get("message")
    if status.get("backend") == "none" or (not gpus and message):
        text = message or "No NVIDIA GPU found."
        if not text.startswith("No NVIDIA GPU found"):
            text = f"No NVIDIA GPU found: {text}"
        lines.append(f"{text} (try --simulate game-launch)")
        return "\n".join(lines)
    header = f"Backend: {status.get('backend')}"
    if status.get("state"):
        header += f"    engine: {status['state']}"
    lines.append(header)
    if message:
        lines.append(message)
    if status.get("game_signals"):
        lines.append("Game signals: " + ", ".join(status["game_signals"]))
    for gpu in gpus:
        lines.append("")
        lines.extend(_gpu_lines(gpu))
    models = status.get("models") or []
    if models:
        lines.append("")
        lines.append("Models:")
        for m in models:
            lines.append(
                f"  {m['name']:<32} GPU {m['gpu']}  {format_bytes(m['size_bytes']):>10}  {m['state']}"
            )
    events = [e for e in status.get("events") or [] if e.get("type") != "LoadProgress"]  # progress: above
    if events:
        lines.append("")
        lines.append("Recent events:")
        for e in events:
            facts = ", ".join(
                f"{k}={_fact(k, v)}" for k, v in e.items() if k not in ("type", "at", "wall_time", "severity")
            )
            lines.append(f"  {e['at']:>9.1f} s  {e['type']}: {facts}")
    return "\n".join(lines)


def _fact(key: str, value: Any) -> str:
    """One event fact for people: sizes in the units used everywhere else (GiB/MiB), not raw bytes."""
    if key.endswith("bytes") and isinstance(value, int) and not isinstance(value, bool):
        return format_bytes(value)
    return str(value)


def _gpu_lines(gpu: Mapping[str, Any]) -> list[str]:
    title = f"GPU {gpu['index']}  {gpu['name']}"
    if gpu["state"] != str(GpuState.OK):
        return [f"{title}  {gpu['state'].upper()}: {gpu.get('message') or 'no details'}"]
    used, total = gpu["used_bytes"], gpu["total_bytes"]
    sensors = []
    if gpu.get("temperature_c") is not None:
        sensors.append(f"{gpu['temperature_c']} °C")
    if gpu.get("utilization_percent") is not None:
        sensors.append(f"{gpu['utilization_percent']} % busy")
    lines = [
        title,
        f"  {usage_bar(used, total)} {format_usage(used, total)} used, "
        f"{format_bytes(gpu['free_bytes'])} free" + (f"  ({', '.join(sensors)})" if sensors else ""),
    ]
    if gpu.get("headroom_bytes") is not None:
        lines.append(f"  headroom kept free: {format_bytes(gpu['headroom_bytes'])}")
    processes = gpu.get("processes") or []
    if not processes:
        lines.append("  no processes")
        return lines
    lines.append(f"  {'PID':>7}  {'NAME':<24} {'KIND':<8} {'USED':>10}  ROLE")
    for p in processes:
        lines.append(
            f"  {p['pid']:>7}  {p['name'][:24]:<24} {p['kind']:<8} {format_bytes(p['used_bytes']):>10}  "
            f"{p.get('role') or '-'}"
        )
    return lines
