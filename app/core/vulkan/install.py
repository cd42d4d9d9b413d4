"""`vram-steward vulkan-layer install|uninstall|status`: the layer is opt-in, installed for this user only.

Install writes, each atomically (app/core/atomic.py):
- the library: $XDG_DATA_HOME/vram-steward/vulkan-layer/<64|32>/libVkLayer_vram_steward.so (a copy, so that
  clearing the cache or moving the app does not break games);
- one manifest per build: $XDG_DATA_HOME/vulkan/implicit_layer.d/vram_steward_layer_<64|32>.json, with the
  library's absolute path, its "library_arch" (a loader of the other word size skips it) and the
  disable_environment VRAM_STEWARD_LAYER_DISABLE=1.
Uninstall removes those files and every folder install made that is empty afterwards: nothing is left.
The engine records when the layer last reported in the state folder (`record_report`), which status shows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from app.core import paths
from app.core.atomic import write_atomic
from app.core.errors import VramError
from app.core.vulkan.build import ARCHES, LIBRARY_NAME, LayerBuildError, layer_library, manifest_template

logger = logging.getLogger(__name__)

LAYER_NAME = "VK_LAYER_VRAM_STEWARD_game_signal"
DISABLE_VARIABLE = "VRAM_STEWARD_LAYER_DISABLE"


@dataclass(frozen=True)
class LayerPaths:
    data_home: Path  # $XDG_DATA_HOME (~/.local/share)

    @classmethod
    def for_user(cls) -> LayerPaths:
        return cls(Path(platformdirs.user_data_dir()))

    @property
    def manifest_dir(self) -> Path:
        """Where the Vulkan loader looks for this user's implicit layers."""
        return self.data_home / "vulkan" / "implicit_layer.d"

    @property
    def library_root(self) -> Path:
        return self.data_home / paths.APP_NAME / "vulkan-layer"

    def manifest(self, arch: str) -> Path:
        return self.manifest_dir / f"vram_steward_layer_{arch}.json"

    def library(self, arch: str) -> Path:
        return self.library_root / arch / LIBRARY_NAME

    def created_folders(self) -> list[Path]:
        """Folders install may create, deepest first: uninstall removes each that is empty."""
        return [
            *(self.library_root / arch for arch in ARCHES),
            self.library_root,
            self.data_home / paths.APP_NAME,
            self.manifest_dir,
            self.manifest_dir.parent,
        ]


@dataclass
class InstallResult:
    installed: dict[str, Path] = field(default_factory=dict)  # arch -> manifest
    skipped: dict[str, str] = field(default_factory=dict)  # arch -> why (no 32-bit toolchain)


class LayerInstallFailed(VramError):
    code = "vulkan_layer_install_failed"


def manifest_text(library: Path, arch: str) -> str:
    text = manifest_template().replace("@LIBRARY_PATH@", str(library)).replace("@LIBRARY_ARCH@", arch)
    json.loads(text)  # a broken template must fail here, not in every game
    return text


def install_layer(
    layer_paths: LayerPaths | None = None, *, arches: tuple[str, ...] = ARCHES
) -> InstallResult:
    """Install the 64-bit layer (required) and the 32-bit one (when it can be built). Raises LayerBuildError
    when the 64-bit layer cannot be built, LayerInstallFailed when a file cannot be written."""
    where = layer_paths or LayerPaths.for_user()
    result = InstallResult()
    for arch in arches:
        try:
            library = layer_library(arch)
        except LayerBuildError as exc:
            if arch == "64":
                raise
            result.skipped[arch] = exc.message
            continue
        target = where.library(arch)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, library.read_bytes(), mode=0o755)
            where.manifest_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(where.manifest(arch), manifest_text(target, arch), mode=0o644)
        except OSError as exc:
            raise LayerInstallFailed(
                f"could not install the Vulkan layer into {target.parent}: {exc.strerror or exc}",
                suggestions=[f"Check that {where.data_home} is writable"],
            ) from exc
        result.installed[arch] = where.manifest(arch)
    for arch in set(ARCHES) - set(result.installed):  # a build no longer made must not stay behind
        _remove(where.manifest(arch))
        _remove(where.library(arch))
    _remove_empty_folders(where)
    return result


def uninstall_layer(layer_paths: LayerPaths | None = None) -> list[Path]:
    """Remove every file and folder install made; the paths removed (files only)."""
    where = layer_paths or LayerPaths.for_user()
    removed = [p for arch in ARCHES for p in (where.manifest(arch), where.library(arch)) if _remove(p)]
    _remove_empty_folders(where)
    return removed


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _remove_empty_folders(where: LayerPaths) -> None:
    for folder in where.created_folders():
        with contextlib.suppress(OSError):  # not empty (other layers, other files of ours) or absent
            folder.rmdir()


def report_state_file() -> Path:
    """Where the engine records the layer's last report (read by `vulkan-layer status`)."""
    return paths.state_dir() / "vulkan-layer.json"


def record_report(facts: dict[str, Any], *, path: Path | None = None) -> None:
    """Remember the latest report (wall time, pid, program, GPU, answer). Never raises: a full disk must not
    hold a game."""
    target = path or report_state_file()
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(target, json.dumps({"at": time.time(), **facts}, sort_keys=True) + "\n")
    except OSError as exc:
        logger.warning("could not record the Vulkan layer's report in %s: %s", target, exc)


def last_report(path: Path | None = None) -> dict[str, Any] | None:
    try:
        data = json.loads((path or report_state_file()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def layer_status(layer_paths: LayerPaths | None = None) -> dict[str, Any]:
    """What `vulkan-layer status --json` prints."""
    where = layer_paths or LayerPaths.for_user()
    builds = {}
    for arch in ARCHES:
        manifest, library = where.manifest(arch), where.library(arch)
        builds[arch] = {
            "manifest": str(manifest),
            "library": str(library),
            "installed": manifest.is_file() and library.is_file(),
        }
    disabled = os.environ.get(DISABLE_VARIABLE) == "1"
    return {
        "layer": LAYER_NAME,
        "installed": builds["64"]["installed"],
        "builds": builds,
        "disabled_by_environment": disabled,
        "disable_variable": f"{DISABLE_VARIABLE}=1",
        "last_report": last_report(),
    }
