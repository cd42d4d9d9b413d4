"""`vram-steward replay SCENARIO [--until SECONDS] [--json]`: what the app would do, and when."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.common import load_settings_or_exit


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay", help="run the engine on a simulated scenario as fast as possible; print events"
    )
    p.add_argument("scenario", help="a shipped scenario name (e.g. game-launch) or a scenario file")
    p.add_argument("--until", type=float, metavar="SECONDS", help="stop at this scenario time")
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.core.errors import VramError
    from app.core.replay import iter_lines, replay

    settings = load_settings_or_exit(args, check_files=False)
    try:
        result = replay(args.scenario, settings, until_s=args.until)
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 2
    for line in iter_lines(result, as_json=args.json):
        print(line)
    if not args.json:
        print(f"-- {result.ticks} ticks, {result.until_s:.0f} s simulated, final state: {result.final_state}")
    return 0
