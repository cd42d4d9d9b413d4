"""`vram-steward games [--forget KEY] [--json]`: what VRAM Steward learned each game needs, and forgetting it.

The next time a game it knows starts, VRAM Steward frees only the lowest-priority models until free VRAM
covers what the game reached last time plus the headroom (docs/games.md). Forgetting one makes its next
start free everything again, and learn anew.
"""

from __future__ import annotations

import argparse
import json
import time

from app.core import paths
from app.core.engine.game_peaks import GamePeaks
from app.core.units import format_bytes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("games", help="list what each game needed last time, or forget one")
    parser.add_argument("--forget", metavar="KEY", help='forget one game (its key, e.g. "steam:1091500")')
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    peaks = GamePeaks(paths.game_peaks_file())
    if args.forget:
        if peaks.forget(args.forget):
            print(f"Forgot {args.forget}: its next start frees every model again, and is learned anew.")
            return 0
        known = ", ".join(sorted(peaks.load())) or "none yet"
        print(f"No game {args.forget!r} was learned (known: {known}).")
        return 1
    games = sorted(peaks.load().values(), key=lambda g: g.name.lower())
    if args.json:
        print(json.dumps([g.to_json() for g in games], indent=2))
        return 0
    if not games:
        print(f"No game learned yet ({peaks.path}): the first run of a game frees every model.")
        return 0
    width = max(len(g.key) for g in games)
    print(f"{'KEY':{width}}  {'PEAK':>9}  RUNS  LAST SEEN         GAME")
    for g in games:
        seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(g.last_seen)) if g.last_seen else "-"
        print(f"{g.key:{width}}  {format_bytes(g.peak_bytes):>9}  {g.runs:>4}  {seen:16}  {g.name}")
    print(f"\n(from {peaks.path}; forget one with: vram-steward games --forget KEY)")
    return 0
