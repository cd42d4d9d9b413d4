"""`vram-steward status [--json] [--simulate SCENARIO] [--at SECONDS]`: one snapshot, now: the running
engine's (through its API), else the GPU sampled by this command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from app.cli.common import load_settings_or_exit

logger = logging.getLogger(__name__)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds such as 30, got {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 0 or more, got {text!r}")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="show the GPUs, their processes and VRAM use now")
    p.add_argument("--json", action="store_true", help="print the status document (docs/status-json.md)")
    p.add_argument(
        "--simulate",
        metavar="SCENARIO",
        help="read a simulated GPU instead: a shipped scenario name (e.g. game-launch) or a scenario file",
    )
    p.add_argument(
        "--at",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="with --simulate: the scenario time to show (default 0)",
    )
    p.set_defaults(func=run)


ENGINE_WAIT_S = 3.0  # how long to wait for an engine that is still taking its first sample
KIND_WORDS = {"daemon": "daemon", "tray": "tray app"}


def _warn_if_the_file_does_not_load(args: argparse.Namespace) -> None:
    from app.core.config import load_settings
    from app.core.errors import VramError

    try:
        load_settings(getattr(args, "config", None), check_files=False, migrate=False)
    except VramError as exc:
        print(
            f"warning: the settings file does not load; the running engine keeps the settings it had:\n"
            f"{exc.user_message()}",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    """Asks the running engine (tray app or daemon) through its API first: its document has the models and
    the processes' roles. With no engine (or with --simulate) it samples the GPU itself and says so."""
    from app.core.engine.status import build_status, format_status_table
    from app.core.errors import VramError
    from app.core.gpu.backend import GpuBackend

    why_direct = "--simulate reads the scenario directly"
    if args.simulate is None and not args.at:
        from_engine, why_direct = ask_engine()
        if from_engine is not None:  # the engine runs with the settings it has: a broken file is a warning
            _warn_if_the_file_does_not_load(args)
            if args.json:
                print(json.dumps(from_engine, indent=2))
            else:
                print(format_status_table(from_engine))
                print("")
                print(engine_line(from_engine["engine"]))
            return 0
    settings = load_settings_or_exit(args, check_files=False)
    extra: dict[str, object] = {}
    events: tuple[Any, ...] = ()
    backend: GpuBackend
    if args.simulate is not None:
        from app.core.gpu.simulated import SimulatedBackend

        at_s = float(args.at)
        try:
            simulated = SimulatedBackend.from_file(args.simulate, clock=lambda: at_s)
        except VramError as exc:
            print(f"error: {exc.user_message()}", file=sys.stderr)
            return 2
        events = simulated.scenario_events()
        extra["scenario"] = {"name": simulated.scenario.name, "path": simulated.scenario.path, "at_s": at_s}
        backend = simulated
    else:
        if args.at:
            print("error: --at needs --simulate SCENARIO", file=sys.stderr)
            return 2
        backend = _open_real_backend()
    try:
        telemetry = backend.sample()
    finally:
        backend.close()
    status = build_status(telemetry, settings=settings, events=events, extra=extra)
    status["source"] = status["backend"]  # read here, not by an engine: no models, no roles
    status["engine"] = None
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status_table(status))
        if status["backend"] != "none":
            what = "the simulated GPU" if args.simulate is not None else "NVML"
            print("")
            print(f"Read from {what} by this command: {why_direct}, so models and process roles are unknown.")
    return 0


def ask_engine(wait_s: float = ENGINE_WAIT_S) -> tuple[dict[str, Any] | None, str]:
    """The running engine's status document with `source` and `engine` added, or (None, why not). The token
    goes only to an engine whose endpoint file was written by a process that still runs."""
    import time

    from app.client import NO_RETRIES, ApiError, StewardClient
    from app.core.errors import VramError
    from app.core.instance import read_holder

    holder = read_holder()
    try:
        client = StewardClient(timeout_s=wait_s, retry=NO_RETRIES)
    except VramError as exc:
        if holder is not None:
            who = f"the {KIND_WORDS.get(holder.kind, holder.kind)}, pid {holder.pid}"
            return None, f"VRAM Steward runs as {who} without its API (--no-api, or its port was taken)"
        return None, exc.message
    deadline = time.monotonic() + wait_s
    while True:
        try:
            status = client.request("GET", "/v1/status", timeout_s=wait_s)
            break
        except ApiError as exc:
            if exc.status == 503 and time.monotonic() < deadline:  # still taking its first sample
                time.sleep(0.2)
                continue
            return None, f"the engine at {client.where} answered {exc.status}: {exc.message}"
        except VramError as exc:
            return None, exc.message
    pid = client.engine_pid
    kind = holder.kind if holder is not None and holder.pid == pid else None
    status["source"] = "engine"
    status["engine"] = {
        "pid": pid,
        "kind": kind,
        "url": client.base_url,  # the TCP address (for other clients), whichever channel this used
        "channel": client.channel,  # "unix" (the default) or "tcp"
        "socket": client.socket_path,
        "tls_fingerprint": client.tls_fingerprint,
    }
    return status, ""


def engine_line(engine: dict[str, Any]) -> str:
    who = KIND_WORDS.get(engine.get("kind") or "", "engine")
    pid = engine.get("pid")
    where = engine.get("url") or ""
    if engine.get("channel") == "unix":
        where = f"{where}; asked through {engine['socket']}" if where else str(engine["socket"])
    line = f"From the running {who}" + (f", pid {pid}" if pid is not None else "") + f" ({where})."
    if engine.get("tls_fingerprint"):
        line += f"\nIts TLS certificate: {engine['tls_fingerprint']}"
    return line


def _open_real_backend() -> Any:
    """NVML, or NullBackend when there is no NVIDIA GPU (or this build has no NVML backend yet)."""
    from app.core.gpu import open_backend
    from app.core.gpu.null import NullBackend

    try:
        return open_backend()
    except ImportError as exc:  # app.core.gpu.nvml missing from this build
        logger.warning("the NVML backend is not available: %s", exc)
        return NullBackend(message=f"No NVIDIA GPU found (the NVML backend could not be imported: {exc}).")
