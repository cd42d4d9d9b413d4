"""tests/vulkan: VRAM Steward's Vulkan layer on the real Vulkan loader with Mesa's CPU driver (lavapipe), a
stand-in game built here, and the engine's real socket. Skipped, loudly, only where the loader, lavapipe or
a compiler is missing (Debian: apt-get install gcc libvulkan-dev libvulkan1 mesa-vulkan-drivers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.vulkan.build import LayerBuildError
from app.core.vulkan.install import LayerPaths, install_layer
from tests.fixtures.vulkan_world import VulkanUnavailable, VulkanWorld, build_standin, lavapipe_icd


@pytest.fixture(scope="session")
def vulkan_parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, LayerPaths, Path]]:
    """(the stand-in game, the layer installed in a private data home, lavapipe's ICD), built once."""
    icd = lavapipe_icd()
    if icd is None:
        pytest.skip(
            "NOT TESTED: the Vulkan layer (no lavapipe ICD: apt-get install mesa-vulkan-drivers libvulkan1)"
        )
    root = tmp_path_factory.mktemp("vulkan")
    try:
        standin = build_standin(root / "bin")
    except VulkanUnavailable as exc:
        pytest.skip(f"NOT TESTED: the Vulkan layer ({exc})")
    layer_paths = LayerPaths(root / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VRAM_STEWARD_CACHE_DIR", str(root / "cache"))  # never the user's ~/.cache
        try:
            install_layer(layer_paths)
        except LayerBuildError as exc:
            pytest.fail(f"the layer does not build although Vulkan is here: {exc.user_message()}")
    yield standin, layer_paths, icd


@pytest.fixture
def vulkan_world(vulkan_parts: tuple[Path, LayerPaths, Path], private_runtime_dir: Path) -> VulkanWorld:
    standin, layer_paths, icd = vulkan_parts
    return VulkanWorld(
        standin=standin, data_home=layer_paths.data_home, runtime_dir=private_runtime_dir, icd=icd
    )
