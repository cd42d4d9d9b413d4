"""Builds the Vulkan layer from its C source (app/data/vulkan_layer) with gcc against the Vulkan headers
(Debian: libvulkan-dev), into the user's cache folder, never into the source tree. The 64-bit build is always
wanted; the 32-bit one (`-m32`, for 32-bit games) only where gcc-multilib is installed. A built library is
reused while the source and the compiler stay the same (the cache key hashes both).

The PyInstaller bundle carries libraries built at packaging time (`prebuilt_library`), so a user of the bundle
needs no compiler."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import platformdirs

from app.core.errors import VramError
from app.core.paths import APP_NAME

logger = logging.getLogger(__name__)

LIBRARY_NAME = "libVkLayer_vram_steward.so"
SOURCE_NAME = "vram_steward_layer.c"
MANIFEST_TEMPLATE_NAME = "manifest.json.in"
ARCHES = ("64", "32")
COMPILE_TIMEOUT_S = 120.0
_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-fvisibility=hidden")


class LayerBuildError(VramError):
    """The layer could not be compiled: no compiler, no Vulkan headers, or no 32-bit toolchain."""

    code = "vulkan_layer_build_failed"

    def __init__(self, arch: str, why: str) -> None:
        package = "gcc-multilib" if arch == "32" else "gcc libvulkan-dev"
        super().__init__(
            f"could not build the {arch}-bit Vulkan layer: {why}",
            details={"arch": arch},
            suggestions=[
                f"Install the build tools (Debian/Ubuntu: sudo apt-get install {package}) and try again"
            ],
        )


def layer_data_dir() -> Path:
    """app/data/vulkan_layer inside the installed package (the source, the manifest template, and in the
    bundle the prebuilt libraries)."""
    return Path(str(resources.files("app").joinpath("data", "vulkan_layer")))


def source_file() -> Path:
    return layer_data_dir() / SOURCE_NAME


def manifest_template() -> str:
    return (layer_data_dir() / MANIFEST_TEMPLATE_NAME).read_text(encoding="utf-8")


def prebuilt_library(arch: str) -> Path | None:
    """A library built when the bundle was made (app/data/vulkan_layer/lib<arch>/), or None."""
    path = layer_data_dir() / f"lib{arch}" / LIBRARY_NAME
    return path if path.is_file() else None


def cache_dir() -> Path:
    override = os.environ.get("VRAM_STEWARD_CACHE_DIR")
    return Path(override or platformdirs.user_cache_dir(APP_NAME)) / "vulkan-layer"


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _compiler_id(cc: str) -> str:
    try:
        result = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return cc
    return result.stdout.splitlines()[0] if result.stdout else cc


def build_layer(arch: str = "64", *, out_dir: Path | None = None) -> Path:
    """The layer library for `arch` ("64" or "32"), compiled now or taken from the cache (`out_dir`, else
    the user's cache folder). Raises LayerBuildError with what to install when it cannot be built."""
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, not {arch!r}")
    cc = compiler()
    if cc is None:
        raise LayerBuildError(arch, "no C compiler (gcc) was found")
    source = source_file()
    digest = hashlib.sha256(source.read_bytes() + _compiler_id(cc).encode() + arch.encode()).hexdigest()[:16]
    target_dir = (out_dir or cache_dir()) / digest / arch  # a changed source or compiler: a new build
    target = target_dir / LIBRARY_NAME
    if target.is_file():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target_dir)
    os.close(fd)
    command = [cc, *_FLAGS, *(["-m32"] if arch == "32" else []), "-o", temp, str(source), "-lpthread"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        os.unlink(temp)
        raise LayerBuildError(arch, f"{cc} could not run ({exc})") from exc
    if result.returncode != 0:
        os.unlink(temp)
        lines = [
            line for line in result.stderr.splitlines() if "error" in line.lower()
        ] or result.stderr.splitlines()
        raise LayerBuildError(arch, "; ".join(lines[:3]) or f"{cc} exited with {result.returncode}")
    os.chmod(temp, 0o755)
    os.replace(temp, target)
    logger.info("built the %s-bit Vulkan layer: %s", arch, target)
    return target


def layer_library(arch: str) -> Path:
    """The library to install: the bundle's prebuilt one, else one built here."""
    return prebuilt_library(arch) or build_layer(arch)


def elf_class(path: Path) -> str | None:
    """ "32" or "64" from an ELF header, None for anything else."""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        head = handle.read(5)
        if head[:4] == b"\x7fELF":
            return {1: "32", 2: "64"}.get(head[4])
    return None
