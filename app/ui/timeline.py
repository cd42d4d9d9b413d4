"""The timeline of the last minutes: per GPU, stacked areas of ours / desktop / games and other apps, with
markers where we evicted (▼ "evicted") or resumed (▲ "resumed").

Time is the GUI's own clock (injected), stamped when a snapshot or event arrives, so NVML's and the engine's
clocks never need to agree.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QPainter, QPainterPath, QPalette, QPen, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.ui.gauges import segment_brushes
from app.ui.presenter import SEGMENTS, GpuView

WINDOW_S = 300.0  # five minutes
MIN_STEP_S = 1.0  # at most one sample a second: 300 points per GPU


@dataclass(frozen=True)
class Sample:
    at: float
    total_bytes: int
    stack: tuple[int, int, int]  # ours, desktop, games_other


@dataclass(frozen=True)
class Marker:
    at: float
    gpu: int
    kind: str  # "evicted" | "resumed"


class TimelineHistory:
    """A bounded history per GPU; the widget paints it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S) -> None:
        self.clock = clock
        self.window_s = window_s
        self.samples: dict[int, collections.deque[Sample]] = {}
        self.markers: collections.deque[Marker] = collections.deque(maxlen=200)

    def add(self, gpus: Sequence[GpuView]) -> bool:
        """Record one sample per GPU; False when it was too soon after the last one (nothing recorded)."""
        now = self.clock()
        recorded = False
        for g in gpus:
            series = self.samples.setdefault(
                g.index, collections.deque(maxlen=int(self.window_s / MIN_STEP_S) + 2)
            )
            if series and now - series[-1].at < MIN_STEP_S:
                continue
            sizes = {s.key: s.bytes for s in g.segments}
            series.append(Sample(now, g.total_bytes, (sizes["ours"], sizes["desktop"], sizes["games_other"])))
            recorded = True
        self._trim(now)
        return recorded

    def mark(self, gpu: int, kind: str) -> None:
        self.markers.append(Marker(self.clock(), gpu, kind))

    def _trim(self, now: float) -> None:
        for series in self.samples.values():
            while series and series[0].at < now - self.window_s:
                series.popleft()
        while self.markers and self.markers[0].at < now - self.window_s:
            self.markers.popleft()


class TimelineWidget(QWidget):
    def __init__(self, history: TimelineHistory, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = history
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(120)
        self.setAccessibleName("VRAM timeline, last five minutes")

    def sizeHint(self) -> QSize:
        return QSize(480, 160)

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
        gpus = sorted(self.history.samples)
        if not gpus:
            p.setPen(text)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Collecting VRAM history ...")
            return
        now = self.history.clock()
        window = self.history.window_s
        band_h = (self.height() - fm.height()) / len(gpus)
        for i, gpu in enumerate(gpus):
            area = QRectF(0.5, i * band_h + 0.5, self.width() - 1.0, band_h - 4)
            self._paint_gpu(p, area, gpu, now, window)
        p.setPen(text)
        y = self.height() - fm.descent()
        p.drawText(0, y, f"-{int(window // 60)} min")
        p.drawText(self.width() - fm.horizontalAdvance("now"), y, "now")

    def _paint_gpu(self, p: QPainter, area: QRectF, gpu: int, now: float, window: float) -> None:
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.WindowText)
        series = list(self.history.samples[gpu])
        p.fillRect(area, pal.color(QPalette.ColorRole.Base))
        if series:
            total = max(series[-1].total_bytes, 1)

            def x_of(at: float) -> float:
                return area.left() + area.width() * (1 - (now - at) / window)

            def y_of(value: int) -> float:
                return area.bottom() - area.height() * min(value, total) / total

            lower = [0] * len(series)
            for layer, key in enumerate(("ours", "desktop", "games_other")):
                upper = [lo + s.stack[layer] for lo, s in zip(lower, series, strict=True)]
                poly = QPolygonF(
                    [QPointF(x_of(s.at), y_of(u)) for s, u in zip(series, upper, strict=True)]
                    + [
                        QPointF(x_of(s.at), y_of(lo))
                        for s, lo in reversed(list(zip(series, lower, strict=True)))
                    ]
                )
                _, colour, pattern = SEGMENTS[key]
                fill, over = segment_brushes(colour, pattern, pal)
                path = QPainterPath()
                path.addPolygon(poly)
                p.fillPath(path, fill)
                if over is not None:
                    p.fillPath(path, over)
                lower = upper
            for marker in self.history.markers:
                if marker.gpu != gpu:
                    continue
                x = x_of(marker.at)
                p.setPen(QPen(text, 1, Qt.PenStyle.DashLine))
                p.drawLine(QPointF(x, area.top()), QPointF(x, area.bottom()))
                p.setPen(text)
                glyph = "▼ evicted" if marker.kind == "evicted" else "▲ resumed"
                width = p.fontMetrics().horizontalAdvance(glyph)
                # near the right edge ("now") the label goes to the left of its line, so it is never cut
                left = x + 3 if x + 3 + width <= area.right() else x - 3 - width
                p.drawText(QPointF(left, area.top() + p.fontMetrics().ascent()), glyph)
        p.setPen(QPen(text, 1))
        p.drawRect(area)
        p.drawText(QPointF(area.left() + 4, area.bottom() - 4), f"GPU {gpu}")
