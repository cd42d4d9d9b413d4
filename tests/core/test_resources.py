"""The one locator of the files shipped inside the package: every icon the app needs is found through
importlib.resources, in the checkout and in the layout a wheel installs (only the package data that
pyproject.toml declares, far from the repository's resources/ folder)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from app.core import resources
from app.core.resources import APP_ICON, app_icon_file, icon_file, shipped_icon_names, state_icon_file

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_icon_is_found_in_the_checkout() -> None:
    names = shipped_icon_names()
    assert f"{APP_ICON}.svg" in names and f"{APP_ICON}-128.png" in names
    for name in names:
        path = icon_file(name)
        assert path is not None and path.is_file(), name
    assert app_icon_file() == icon_file(f"{APP_ICON}-128.png")
    assert state_icon_file("paused") == icon_file("paused.svg")


def test_a_missing_icon_is_none_not_an_error() -> None:
    assert icon_file("no-such-icon.svg") is None
    assert state_icon_file("no-such-state") is None
    assert app_icon_file(size_px=17) is None


def wheel_layout(target: Path) -> Path:
    """The `app` package as a wheel installs it: its modules, and only the data files matching
    [tool.setuptools.package-data] (setuptools takes nothing else from a folder without __init__.py)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["app"]
    source = ROOT / "app"
    site = target / "site-packages"
    for module in source.rglob("*.py"):
        if "__pycache__" not in module.parts:
            (site / "app" / module.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(module, site / "app" / module.relative_to(source))
    for pattern in patterns:
        for data in source.glob(pattern):
            (site / "app" / data.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data, site / "app" / data.relative_to(source))
    return site


def test_every_icon_is_found_from_an_installed_wheel_layout(tmp_path: Path) -> None:
    site = wheel_layout(tmp_path)
    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import app.core.resources as r; "
        "print(json.dumps({'package': r.__file__, 'dir': str(r.icons_dir()), "
        "'found': {n: str(r.icon_file(n)) if r.icon_file(n) else None for n in r.shipped_icon_names()}}))"
    )
    # -I -S: no site-packages (so no editable install pointing back at the checkout), no PYTHONPATH
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(result.stdout)
    assert Path(answer["package"]).is_relative_to(site)
    assert Path(answer["dir"]) == site / "app" / "data" / "icons"
    missing = [name for name, path in answer["found"].items() if path is None]
    assert missing == [], f"not shipped in the wheel (pyproject.toml package-data): {missing}"
    assert sorted(answer["found"]) == shipped_icon_names()
    for path in answer["found"].values():
        assert Path(path).is_relative_to(site)


def test_the_icon_list_names_every_icon_file_in_the_package() -> None:
    """A new icon file is either in the list (and so checked above) or a leftover to remove."""
    on_disk = sorted(p.name for p in resources.icons_dir().iterdir() if p.is_file())
    assert on_disk == shipped_icon_names()
