"""`vram-steward vulkan-layer install|uninstall|status [--json]`: the optional Vulkan layer that lets VRAM
Steward see a Vulkan game (native, or a Windows game under Proton/DXVK/VKD3D) before it creates its device,
and free VRAM first (docs/vulkan-layer.md). Installed for this user only; nothing loads until installed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from app.core.errors import VramError
from app.core.vulkan.install import DISABLE_VARIABLE, install_layer, layer_status, uninstall_layer


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "vulkan-layer", help="install, remove or check the optional Vulkan layer that sees games early"
    )
    parser.add_argument("action", choices=("install", "uninstall", "status"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "install":
            return _install(args.json)
        if args.action == "uninstall":
            return _uninstall(args.json)
        return _status(args.json)
    except VramError as exc:
        if args.json:
            print(json.dumps(exc.to_problem(), indent=2))
        else:
            print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1


def _install(as_json: bool) -> int:
    result = install_layer()
    status = layer_status()
    if as_json:
        print(json.dumps({**status, "skipped": result.skipped}, indent=2))
        return 0
    for arch, manifest in sorted(result.installed.items(), reverse=True):
        print(f"Installed the {arch}-bit Vulkan layer: {manifest}")
    for arch, why in result.skipped.items():
        print(f"Not installed: the {arch}-bit layer (for 32-bit games): {why}")
    print(
        "Vulkan programs started from now on report to VRAM Steward before they create their device.\n"
        f"Turn it off for one program with {DISABLE_VARIABLE}=1, or for good with: "
        "vram-steward vulkan-layer uninstall"
    )
    return 0


def _uninstall(as_json: bool) -> int:
    removed = uninstall_layer()
    if as_json:
        print(json.dumps({"removed": [str(p) for p in removed], **layer_status()}, indent=2))
        return 0
    if not removed:
        print("The Vulkan layer was not installed: nothing to remove.")
    for path in removed:
        print(f"Removed {path}")
    return 0


def _status(as_json: bool) -> int:
    status = layer_status()
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    if not status["installed"]:
        print("The Vulkan layer is not installed (install it with: vram-steward vulkan-layer install).")
    for arch, build in sorted(status["builds"].items(), reverse=True):
        state = "installed" if build["installed"] else "not installed"
        print(f"{arch}-bit: {state}: {build['manifest']} -> {build['library']}")
    if status["disabled_by_environment"]:
        print(f"{DISABLE_VARIABLE}=1 is set here: programs started from this environment skip the layer.")
    print(f"Last report: {_describe_report(status['last_report'])}")
    return 0


def _describe_report(report: dict[str, Any] | None) -> str:
    if not report:
        return "none yet"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(report.get("at", 0))))
    program = report.get("program") or f"pid {report.get('pid')}"
    return f"{when}: {program} on {report.get('device') or 'a device'} (answer: {report.get('answer')})"
