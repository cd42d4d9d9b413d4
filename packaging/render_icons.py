"""Render app/data/icons/vram-steward.svg to the PNG sizes the desktop needs (48, 128, 256 px).

Run after editing the SVG, and commit the PNGs: `.venv/bin/python packaging/render_icons.py`.
Uses Qt's own SVG renderer offscreen, so no display and no extra tool is needed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ICONS = Path(__file__).resolve().parents[1] / "app" / "data" / "icons"
SVG = ICONS / "vram-steward.svg"
SIZES_PX = (48, 128, 256)


def png_path(size_px: int) -> Path:
    return ICONS / f"vram-steward-{size_px}.png"


def render(svg: Path, size_px: int, out: Path) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"error: {svg} is not a valid SVG")
    image = QImage(size_px, size_px, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(out), "PNG"):
        raise SystemExit(f"error: could not write {out}")


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    for size_px in SIZES_PX:
        render(SVG, size_px, png_path(size_px))
        print(f"wrote {png_path(size_px)}")
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
