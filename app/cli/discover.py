"""`vram-steward discover [--json] [--port N] [--manage KIND@URL | --all]`: find the AI apps running on this
machine, say which are managed already, and manage the others.

One discovery pass, here and now, with the same probes the tray app and the daemon run in the background
(app/core/servers/discovery.py): loopback only, the known apps' default ports, the `--port` their processes
were started with, each `[[servers]]` entry's port, and any `--port` given here. `--manage` writes the
`[[servers]]` entry exactly as "Manage it" on the notification does (comments in the file kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.common import load_settings_or_exit

if TYPE_CHECKING:
    from app.core.servers.discovery import FoundApp


class BadSpec(ValueError):
    """A `--manage` value that is not KIND@URL with a loopback URL (exit 2)."""


class NotFound(LookupError):
    """No app of that kind answered at that URL in this pass (exit 1)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "discover", help="find the AI apps running here (loopback only); manage them with --manage or --all"
    )
    parser.add_argument("--json", action="store_true", help="print what was found as JSON")
    parser.add_argument(
        "--port",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="also ask this loopback port as every known app (an app on a port of its own); repeatable",
    )
    manage = parser.add_mutually_exclusive_group()
    manage.add_argument(
        "--manage",
        action="append",
        default=[],
        metavar="KIND@URL",
        help="manage an app found, e.g. comfyui@http://127.0.0.1:8188 (writes its [[servers]] entry)",
    )
    manage.add_argument("--all", action="store_true", help="manage every app found that is not managed yet")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.core.servers.discovery import discover
    from app.core.settings import Settings

    config = _config_file(args)
    # no settings file yet: nothing is managed (and --manage writes the file)
    exists = config.exists() or config.is_symlink()
    settings = load_settings_or_exit(args, check_files=False, migrate=False) if exists else Settings()
    try:
        found = discover(settings.servers, include_managed=True, extra_ports=args.port)
    except ValueError as exc:  # a --port out of range
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wanted = []
    for spec in args.manage:
        try:
            wanted.append(_pick(spec, found))
        except (BadSpec, NotFound) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, BadSpec) else 1
    if args.all:
        wanted = [app for app in found if not app.managed]
    added: list[FoundApp] = []
    already: list[FoundApp] = []
    for app in {app.port: app for app in wanted}.values():  # each app once
        if app.managed:
            already.append(app)
            continue
        try:
            _manage(args, app)
        except Exception as exc:  # a broken or unwritable file: say which, and why
            from app.core.errors import VramError

            text = exc.user_message() if isinstance(exc, VramError) else str(exc)
            print(f"error: could not save the entry for {app.kind} at {app.url}: {text}", file=sys.stderr)
            return 1
        added.append(app)
    added_ports = {app.port for app in added}
    if args.json:
        print(
            json.dumps(
                {
                    "apps": [_app_json(app, app.port in added_ports) for app in found],
                    "added": [_app_json(app, True) for app in added],
                    "config_file": str(config),
                },
                indent=2,
            )
        )
        return 0
    _print_table(found, added_ports)
    for app in already:
        print(f"{app.display_name} at {app.url} is managed already.")
    if added:
        print(
            f"\nSaved in {config}: {', '.join(f'{a.display_name} ({a.url})' for a in added)}. "
            "A running tray app or daemon manages it within a few seconds "
            "(both apply edits of their settings file while running)."
        )
    elif any(not app.managed for app in found) and not wanted:
        first = next(app for app in found if not app.managed)
        print(f"\nManage one with: vram-steward discover --manage {first.kind}@{first.url}  (or --all)")
    return 0


def _pick(spec: str, found: list[FoundApp]) -> FoundApp:
    """The found app that `KIND@URL` names (a Forge found as A1111 is managed as `forge`)."""
    from app.core.loopback import is_loopback
    from app.core.servers.discovery import FoundApp

    kind, at, url = spec.partition("@")
    if not at or not kind or not url:
        raise BadSpec(f"--manage {spec!r}: expected KIND@URL, e.g. comfyui@http://127.0.0.1:8188")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if parts is None or port is None or not parts.hostname or not is_loopback(parts.hostname):
        raise BadSpec(
            f"--manage {spec!r}: the URL must be a loopback address with a port, as discovery lists it "
            "(http://127.0.0.1:PORT); add a remote server to the settings file by hand (docs/servers.md)"
        )
    same_api = {"forge": "a1111"}  # Forge keeps A1111's API: found as a1111
    for app in found:
        if app.port == port and app.kind == same_api.get(kind, kind):
            return FoundApp(kind, app.display_name, app.url, app.port, app.managed)
    listed = ", ".join(f"{a.kind}@{a.url}" for a in found) or "nothing"
    raise NotFound(
        f"no {kind} answered at {url} (found: {listed}). Start the app first, or add its entry to the "
        "settings file by hand (docs/servers.md)"
    )


def _manage(args: argparse.Namespace, app: FoundApp) -> None:
    from app.core.config import add_server

    add_server(getattr(args, "config", None), app.server_config())


def _config_file(args: argparse.Namespace) -> Path:
    from app.core import paths

    config = getattr(args, "config", None)
    return Path(config) if config is not None else paths.default_config_file()


def _app_json(app: FoundApp, added: bool) -> dict[str, object]:
    return {
        "kind": app.kind,
        "name": app.display_name,
        "url": app.url,
        "port": app.port,
        "managed": app.managed or added,
    }


def _print_table(apps: list[FoundApp], added_ports: set[int]) -> None:
    if not apps:
        print(
            "No known AI app answered on this machine's loopback ports "
            "(an app on a port of its own: vram-steward discover --port N)."
        )
        return

    def managed(app: FoundApp) -> str:
        return "yes" if app.managed else "added" if app.port in added_ports else "no"

    rows = [(a.kind, a.display_name, a.url, managed(a)) for a in apps]
    header = ("KIND", "APP", "URL", "MANAGED")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
