"""A VRAM gauge: one horizontal bar per GPU, split into ours / desktop / games and other apps / reserved by
the driver / free (free is exactly the GPU's free VRAM, as `status` and nvidia-smi say), with the headroom
marked. Each part has a colour, a pattern and a label (nothing told by colour alone); text and outlines use
the palette, so it reads in light and dark themes."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.core.units import format_bytes, format_usage
from app.ui.presenter import GpuView

PATTERNS = {
    "solid": Qt.BrushStyle.SolidPattern,
    "diagonal": Qt.BrushStyle.BDiagPattern,
    "cross": Qt.BrushStyle.DiagCrossPattern,
    "dense": Qt.BrushStyle.Dense6Pattern,
    "none": Qt.BrushStyle.NoBrush,
}


def segment_brushes(colour: str, pattern: str, palette: QPalette) -> tuple[QBrush, QBrush | None]:
    """A base fill plus an optional pattern on top (patterns are drawn over a lighter tint of the colour)."""
    if not colour:
        return QBrush(palette.color(QPalette.ColorRole.Base)), None
    base = QColor(colour)
    if pattern == "solid":
        return QBrush(base), None
    tint = QColor(base)
    tint.setAlpha(110)
    return QBrush(tint), QBrush(base, PATTERNS.get(pattern, Qt.BrushStyle.SolidPattern))


class VramGauge(QWidget):
    """Paints one `GpuView`. `set_view()` repaints only when something visible changed."""

    BAR_HEIGHT = 22

    def __init__(self, parent: QWidget | None = None, *, compact: bool = False) -> None:
        super().__init__(parent)
        self._view: GpuView | None = None
        self._compact = compact
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFocusPolicy(Qt.FocusPolicy.TabFocus)  # keyboard users land here and hear the accessible text

    def sizeHint(self) -> QSize:
        lines = 2 if self._compact else 3
        width = max(360, self.fontMetrics().horizontalAdvance(self.legend()) + 8)
        return QSize(width, self.BAR_HEIGHT + lines * self.fontMetrics().height() + 10)

    def legend(self) -> str:
        """The line under the bar: every part with its size."""
        if self._view is None:
            return ""
        return "  ".join(
            f"{s.label} {format_bytes(s.bytes)}" for s in self._view.segments if s.bytes or s.key == "free"
        )

    def view(self) -> GpuView | None:
        return self._view

    def set_view(self, view: GpuView | None) -> None:
        if view == self._view:
            return
        self._view = view
        self.setAccessibleName(f"GPU {view.index} VRAM" if view else "VRAM")
        self.setAccessibleDescription(self.describe())
        self.setToolTip(self.describe())
        self.updateGeometry()
        self.update()

    def describe(self) -> str:
        """The gauge in words (tooltip, screen readers, tests)."""
        v = self._view
        if v is None:
            return "No GPU data yet"
        if v.problem:
            return v.status_line
        parts = ", ".join(f"{s.label} {format_bytes(s.bytes)}" for s in v.segments)
        return f"GPU {v.index} {v.name}: {parts}; headroom {format_bytes(v.headroom_bytes)}"

    def paintEvent(self, _event: object) -> None:
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, p: QPainter) -> None:
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.WindowText)
        fm = self.fontMetrics()
        line = fm.height()
        v = self._view
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        p.setPen(text)
        if v is None:
            p.drawText(0, line, "No GPU data yet")
            return
        title = f"GPU {v.index} · {v.name}" if not self._compact else f"GPU {v.index}"
        p.drawText(0, fm.ascent(), f"{title}: {format_usage(v.used_bytes, v.total_bytes)} used")
        bar = QRectF(0.5, line + 3.5, self.width() - 1.0, self.BAR_HEIGHT)
        if v.problem:
            p.drawText(bar, Qt.AlignmentFlag.AlignVCenter, v.problem)
            return
        total = max(v.total_bytes, 1)
        x = bar.left()
        for seg in v.segments:
            w = bar.width() * seg.bytes / total
            if w <= 0:
                continue
            rect = QRectF(x, bar.top(), w, bar.height())
            fill, pattern = segment_brushes(seg.colour, seg.pattern, pal)
            p.fillRect(rect, fill)
            if pattern is not None:
                p.fillRect(rect, pattern)
            if w > fm.horizontalAdvance(seg.label) + 8 and not self._compact:
                self._label(p, rect, seg.label)
            x += w
        p.setPen(QPen(text, 1))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(bar)
        # headroom: the last headroom_bytes of the bar, marked by a dashed line and named
        hx = bar.left() + bar.width() * max(total - v.headroom_bytes, 0) / total
        p.setPen(QPen(text, 2, Qt.PenStyle.DashLine))
        p.drawLine(int(hx), int(bar.top()) - 3, int(hx), int(bar.bottom()) + 3)
        p.setPen(text)
        below = bar.bottom() + fm.ascent() + 2
        p.drawText(0, int(below), self.legend())
        if not self._compact:
            p.drawText(
                0, int(below + line), f"┆ headroom {format_bytes(v.headroom_bytes)} kept free for the desktop"
            )

    @staticmethod
    def _label(p: QPainter, rect: QRectF, label: str) -> None:
        """A label on a segment, on a plate so it reads over any colour and pattern."""
        fm = p.fontMetrics()
        w, h = fm.horizontalAdvance(label) + 6, fm.height()
        plate = QRectF(rect.center().x() - w / 2, rect.center().y() - h / 2, w, h)
        p.fillRect(plate, QColor(255, 255, 255, 200))
        p.setPen(QColor("#111111"))
        p.drawText(plate, Qt.AlignmentFlag.AlignCenter, label)
