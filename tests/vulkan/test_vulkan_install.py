"""`vram-steward vulkan-layer install|uninstall|status`: files where the Vulkan loader looks, nothing left
behind, and the loader really loads what was installed (tests/vulkan/test_vulkan_layer_loader.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.vulkan.build import elf_class
from app.core.vulkan.install import LAYER_NAME, LayerPaths, install_layer, record_report, uninstall_layer
from tests.fixtures.engine_procs import engine_env, run_app


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VRAM_STEWARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_install_then_uninstall_leaves_nothing(tmp_path: Path, cache: Path) -> None:
    data = tmp_path / "data"
    (data / "vulkan" / "implicit_layer.d").mkdir(parents=True)
    (data / "vulkan" / "implicit_layer.d" / "other_layer.json").write_text("{}")  # someone else's
    before = tree(data)
    where = LayerPaths(data)
    result = install_layer(where)
    assert "64" in result.installed
    manifest = json.loads(where.manifest("64").read_text())
    assert manifest["layer"]["name"] == LAYER_NAME
    assert manifest["layer"]["library_path"] == str(where.library("64"))
    assert manifest["layer"]["disable_environment"] == {"VRAM_STEWARD_LAYER_DISABLE": "1"}
    assert elf_class(where.library("64")) == "64"
    if "32" in result.installed:
        assert elf_class(where.library("32")) == "32"
        assert json.loads(where.manifest("32").read_text())["layer"]["library_arch"] == "32"
    else:
        assert "32" in result.skipped
    assert cache.is_dir() and not str(where.library("64")).startswith(str(cache)), "a copy, not the cache"
    install_layer(where)  # again: the same files, no error
    removed = uninstall_layer(where)
    assert where.manifest("64") in removed
    assert tree(data) == before, "uninstall left something behind (or removed someone else's file)"
    assert uninstall_layer(where) == []


def test_uninstall_removes_the_folders_it_made(tmp_path: Path, cache: Path) -> None:
    data = tmp_path / "fresh"
    data.mkdir()
    install_layer(LayerPaths(data))
    uninstall_layer(LayerPaths(data))
    assert tree(data) == set()


def test_cli_install_status_uninstall(tmp_path: Path) -> None:
    env = engine_env(
        tmp_path, XDG_DATA_HOME=str(tmp_path / "data"), VRAM_STEWARD_CACHE_DIR=str(tmp_path / "c")
    )
    env.pop("VRAM_STEWARD_LAYER_DISABLE", None)
    status = json.loads(run_app(tmp_path, "vulkan-layer", "status", "--json", env=env).stdout)
    assert status["installed"] is False and status["last_report"] is None
    installed = run_app(tmp_path, "vulkan-layer", "install", env=env)
    assert installed.returncode == 0, installed.stderr
    assert "Installed the 64-bit Vulkan layer" in installed.stdout
    status = json.loads(run_app(tmp_path, "vulkan-layer", "status", "--json", env=env).stdout)
    assert status["installed"] is True
    assert status["builds"]["64"]["manifest"].startswith(
        str(tmp_path / "data" / "vulkan" / "implicit_layer.d")
    )
    # what the engine writes on a report (its state dir is VRAM_STEWARD_STATE_DIR = tmp_path/state)
    record_report(
        {"pid": 7, "program": "Game.exe", "device": "GPU", "answer": "freed"},
        path=tmp_path / "state" / "vulkan-layer.json",
    )
    text = run_app(tmp_path, "vulkan-layer", "status", env=env).stdout
    assert "64-bit: installed" in text and "Game.exe" in text and "freed" in text
    removed = run_app(tmp_path, "vulkan-layer", "uninstall", env=env)
    assert removed.returncode == 0 and "Removed" in removed.stdout
    assert tree(tmp_path / "data") == set()


def test_install_without_a_compiler_says_what_to_install(tmp_path: Path) -> None:
    env = engine_env(
        tmp_path, XDG_DATA_HOME=str(tmp_path / "data"), VRAM_STEWARD_CACHE_DIR=str(tmp_path / "c"),
        CC=str(tmp_path / "no-such-gcc"),
    )  # fmt: skip
    result = run_app(tmp_path, "vulkan-layer", "install", env=env)
    assert result.returncode == 1
    assert "could not build the 64-bit Vulkan layer" in result.stderr and "apt-get install" in result.stderr
    assert not (tmp_path / "data" / "vulkan").exists()
