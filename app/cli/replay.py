"""`vram-steward replay SCENARIO [--until SECONDS] [--json]`: what the app would do, and when, and what
came of it for the user (free VRAM, other processes refused memory), with the settings file it used."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.common import load_settings_or_exit
from app.core.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="run the engine on a simulated scenario as fast as possible; print events and their outcome",
    )
    p.add_argument("scenario", help="a shipped scenario name (e.g. game-launch) or a scenario file")
    p.add_argument("--until", type=float, metavar="SECONDS", help="stop at this scenario time")
    p.add_argument(
        "--json", action="store_true", help="one JSON object per line: the settings, each event, each outcome"
    )
    p.set_defaults(func=run)


def settings_source(args: argparse.Namespace) -> tuple[Path, bool]:
    """The settings file the command reads, and whether it exists (a missing default file means defaults)."""
    from app.core import paths

    explicit = getattr(args, "config", None)
    path = Path(explicit) if explicit is not None else paths.default_config_file()
    return path, path.exists()


def settings_lines(path: Path, exists: bool, settings: Settings) -> list[str]:
    """What a replay says first: the file it used and the settings that decide what happens."""
    source = f"Settings: {path}" if exists else f"Settings: the defaults (no file at {path})"
    apps = ", ".join(settings.exclusive_apps) or "none"
    pause, evict = ("on" if flag else "off" for flag in (settings.auto_pause_for_gaming, settings.auto_evict))
    return [source, f"  auto_pause_for_gaming {pause}, auto_evict {evict}, exclusive_apps: {apps}"]


def run(args: argparse.Namespace) -> int:
    from app.core.errors import VramError
    from app.core.replay import iter_lines, replay

    settings = load_settings_or_exit(args, check_files=False, migrate=False)  # read, never rewritten
    path, exists = settings_source(args)
    try:
        result = replay(args.scenario, settings, until_s=args.until)
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps({"type": "Settings", "settings_file": str(path) if exists else None}, sort_keys=True)
        )
    else:
        for line in settings_lines(path, exists, settings):
            print(line)
    for line in iter_lines(result, as_json=args.json):
        print(line)
    if not args.json:
        print(
            f"-- {result.ticks} ticks, {result.until_s:.0f} s simulated, final state: {result.final_state}; "
            f"{result.refusal_summary()}"
        )
    return 0
