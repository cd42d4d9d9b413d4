"""`vram-steward status [--json] [--simulate SCENARIO] [--at SECONDS]`: one telemetry snapshot, now."""

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


def run(args: argparse.Namespace) -> int:
    from app.core.engine.status import build_status, format_status_table
    from app.core.errors import VramError
    from app.core.gpu.backend import GpuBackend

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
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status_table(status))
    return 0


def _open_real_backend() -> Any:
    """NVML, or NullBackend when there is no NVIDIA GPU (or this build has no NVML backend yet)."""
    from app.core.gpu import open_backend
    from app.core.gpu.null import NullBackend

    try:
        return open_backend()
    except ImportError as exc:  # app.core.gpu.nvml missing from this build
        logger.warning("the NVML backend is not available: %s", exc)
        return NullBackend(message=f"No NVIDIA GPU found (the NVML backend could not be imported: {exc}).")
