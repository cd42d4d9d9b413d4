"""The parts of tests/gpu/test_vulkan_game_fill.py that run without an NVIDIA GPU: it skips with a clear
reason where no NVIDIA Vulkan device exists, and its fill (95 % of the heap in blocks, counting failures)
works on lavapipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.vulkan_world import VulkanWorld, fill_summary, nvidia_world


def test_skips_clearly_without_an_nvidia_vulkan_device(
    tmp_path: Path, vulkan_world: VulkanWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VRAM_STEWARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VK_ICD_FILENAMES", str(vulkan_world.icd))  # lavapipe only: no NVIDIA device
    with pytest.raises(pytest.skip.Exception, match="NOT TESTED: no NVIDIA Vulkan device"):
        nvidia_world(tmp_path, vulkan_world.runtime_dir)
    monkeypatch.setenv("VK_ICD_FILENAMES", str(tmp_path / "missing_icd.json"))
    with pytest.raises(pytest.skip.Exception, match="no NVIDIA Vulkan ICD"):
        nvidia_world(tmp_path, vulkan_world.runtime_dir)


def test_fill_counts_blocks_and_failures(vulkan_world: VulkanWorld) -> None:
    # lavapipe's heap is host memory, allocated lazily: 95 % of it in 64 MiB blocks costs no real RAM
    run = vulkan_world.run("--fill-percent", "95", "--block-mib", "64")
    assert run.returncode == 0, run.stderr
    summary = fill_summary(run.devices)
    assert summary["failed"] == 0
    heap, taken = float(summary["heap_gib"]), float(summary["taken_gib"])  # type: ignore[arg-type]
    assert 0.9 * heap <= taken <= 0.95 * heap
