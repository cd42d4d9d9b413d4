"""`vram-steward config check|path|show|init`: find, check, show and create the settings file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.core import config, paths
from app.core.errors import ConfigError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("config", help="check, show or create the settings file")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION")

    check = actions.add_parser("check", help="validate the settings file and list every problem")
    check.add_argument(
        "file", nargs="?", type=Path, help="the file to check (default: --config or the default)"
    )
    check.set_defaults(func=run, config_action="check")

    for name, help_text in (
        ("path", "print where the settings file is"),
        ("show", "print the effective settings as TOML"),
        ("init", "write the commented default settings file if none exists"),
    ):
        actions.add_parser(name, help=help_text).set_defaults(func=run, config_action=name)
    parser.set_defaults(func=run, config_action=None)


def _settings_file(args: argparse.Namespace) -> tuple[Path, bool]:
    """The file to use and whether it was named explicitly (a missing default file means defaults)."""
    named = getattr(args, "file", None) or getattr(args, "config", None)
    if named is not None:
        return Path(named), True
    return paths.default_config_file(), False


def run(args: argparse.Namespace) -> int:
    action = args.config_action
    path, explicit = _settings_file(args)
    if action == "path":
        print(path)
        return 0
    if action == "init":
        if config.ensure_default_config(path):
            print(f"Wrote the default settings to {path}")
        else:
            print(f"{path} already exists; left unchanged")
        return 0
    if action == "check":
        return _check(path, explicit)
    if action == "show":
        try:
            settings = config.load_settings(path if explicit else None, check_files=False, migrate=False)
        except ConfigError as exc:
            _print_problems(exc)
            return 1
        sys.stdout.write(config.settings_to_toml(settings))
        return 0
    print("usage: vram-steward config {check,path,show,init}", file=sys.stderr)
    return 2


def _check(path: Path, explicit: bool) -> int:
    if not explicit and not path.exists():
        print(f"OK: {path} does not exist; the defaults apply (`vram-steward config init` writes them)")
        return 0
    try:
        version = config.file_schema_version(path)
        settings = config.load_settings(path, migrate=False)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    print(f"OK: {path}")
    print(_summary(settings))
    if version < config.SCHEMA_VERSION:
        print(
            f"  schema {version}: migrated to schema {config.SCHEMA_VERSION} (with a backup) "
            "when VRAM Steward next loads it"
        )
    return 0


def _print_problems(exc: ConfigError) -> None:
    problems = getattr(exc, "problems", (exc,))
    for problem in problems:
        print(problem.message, file=sys.stderr)
    count = len(problems)
    print(f"{count} problem{'s' if count != 1 else ''} in {exc.path}", file=sys.stderr)


def _summary(settings: config.Settings) -> str:
    gpus = sorted({m.gpu for m in settings.models})
    on_gpus = f" on GPU {', '.join(map(str, gpus))}" if gpus else ""
    lines = [
        f"  {len(settings.models)} model(s){on_gpus}, {len(settings.app_rules)} app rule(s), "
        f"{len(settings.servers)} server(s)",
        f"  auto_evict={_on(settings.auto_evict)}, "
        f"auto_pause_for_gaming={_on(settings.auto_pause_for_gaming)}, "
        f"gpu_device={settings.gpu_device}, API {settings.api_host}:{settings.api_port}",
    ]
    return "\n".join(lines)


def _on(flag: bool) -> str:
    return "on" if flag else "off"
