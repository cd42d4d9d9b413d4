"""The VRAM timeline: per GPU, stacked areas of ours / desktop / games and other apps over the last hour
(one sample a second) or the last day (the fullest sample of each minute), with a GiB axis, a legend with
swatches, markers where we freed VRAM (▼ "freed") or brought models back (▲ "back"), and the values under
the mouse.

Hand-painted with QPainter rather than a plotting library: pyqtgraph would bring numpy into the tray
process (about +52 MiB RSS and +0.5 s at first open, docs/design-notes.md) for what is three stacked areas
and a few lines.

Time is the GUI's own clock (injected), stamped when a snapshot or event arrives, so NVML's and the engine's
clocks never need to agree.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QMouseEvent, QPainter, QPainterPath, QPalette, QPen, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.core.units import GiB, format_bytes
from app.ui.gauges import segment_brushes
from app.ui.presenter import SEGMENTS, GpuView

HOUR_S = 3600.0
DAY_S = 86400.0
MIN_STEP_S = 1.0  # the hour view: at most one sample a second (3600 points per GPU)
DAY_STEP_S = 60.0  # the day view: the fullest sample of each minute (1440 points per GPU)
RANGES: dict[str, tuple[float, float]] = {"hour": (HOUR_S, MIN_STEP_S), "day": (DAY_S, DAY_STEP_S)}
LAYERS = ("ours", "desktop", "games_other")
MARKER_TEXT = {"evicted": "▼ freed", "resumed": "▲ back"}
WINDOW_S = HOUR_S  # what the first version called the window


@dataclass(frozen=True)
class Sample:
    at: float
    total_bytes: int
    stack: tuple[int, int, int]  # ours, desktop, games_other

    @property
    def used_bytes(self) -> int:
        return sum(self.stack)


@dataclass(frozen=True)
class Marker:
    at: float
    gpu: int
    kind: str  # "evicted" | "resumed"


@dataclass(frozen=True)
class Hover:
    """What the mouse points at: one GPU's sample."""

    gpu: int
    sample: Sample
    ago_s: float

    def text(self) -> str:
        ago = "now" if self.ago_s < 1 else f"{_duration(self.ago_s)} ago"
        parts = ", ".join(
            f"{SEGMENTS[key][0]} {format_bytes(size)}"
            for key, size in zip(LAYERS, self.sample.stack, strict=True)
        )
        return f"GPU {self.gpu}, {ago}: {parts}; {format_bytes(self.sample.used_bytes)} used"


def _duration(seconds: float) -> str:
    """ "45 s", "12 min", "1 h 30 min": rounded to the unit shown."""
    if seconds < 59.5:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


class TimelineHistory:
    """A bounded history per GPU at two resolutions (the hour and the day); the widget paints it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = HOUR_S) -> None:
        self.clock = clock
        self.window_s = window_s  # the fine (hour) series' length
        self.samples: dict[int, collections.deque[Sample]] = {}  # one a second, the last hour
        self.day_samples: dict[int, collections.deque[Sample]] = {}  # one a minute, the last day
        self._minute: dict[int, Sample] = {}  # the fullest sample of the minute being collected
        self.markers: collections.deque[Marker] = collections.deque(maxlen=2000)

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
            sample = Sample(now, g.total_bytes, (sizes["ours"], sizes["desktop"], sizes["games_other"]))
            series.append(sample)
            self._add_to_day(g.index, sample)
            recorded = True
        self._trim(now)
        return recorded

    def _add_to_day(self, gpu: int, sample: Sample) -> None:
        day = self.day_samples.setdefault(gpu, collections.deque(maxlen=int(DAY_S / DAY_STEP_S) + 2))
        pending = self._minute.get(gpu)
        if pending is None or sample.used_bytes >= pending.used_bytes:
            self._minute[gpu] = sample
        if not day or sample.at - day[-1].at >= DAY_STEP_S:
            day.append(self._minute.pop(gpu))

    def mark(self, gpu: int, kind: str) -> None:
        self.markers.append(Marker(self.clock(), gpu, kind))

    def series(self, gpu: int, range_name: str = "hour") -> list[Sample]:
        """The samples of one GPU for the hour or the day view, oldest first."""
        source = self.samples if range_name == "hour" else self.day_samples
        return list(source.get(gpu, ()))

    def gpus(self) -> list[int]:
        return sorted(self.samples)

    def _trim(self, now: float) -> None:
        for series in self.samples.values():
            while series and series[0].at < now - self.window_s:
                series.popleft()
        for series in self.day_samples.values():
            while series and series[0].at < now - DAY_S:
                series.popleft()
        while self.markers and self.markers[0].at < now - DAY_S:
            self.markers.popleft()


def gib_step(total_bytes: int, max_ticks: int) -> int:
    """A round GiB step for the axis: 1, 2, 4, 8 ... GiB, so that at most `max_ticks` ticks fit."""
    step = GiB
    while total_bytes / step > max(max_ticks, 1):
        step *= 2
    return step


class TimelineWidget(QWidget):
    """Paints a TimelineHistory: one band per GPU, a legend on top, the time axis below."""

    def __init__(self, history: TimelineHistory, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = history
        self.range_name = "hour"
        self.hover: Hover | None = None
        self._hover_at: QPointF | None = None
        self._painted_at = float("-inf")  # when refresh() last asked for a repaint
        self._painted_markers: tuple[int, float | None] = (0, None)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(140)
        self.setMouseTracking(True)
        self._describe()

    def sizeHint(self) -> QSize:
        return QSize(560, 220)

    def minimumSizeHint(self) -> QSize:
        return QSize(320, 140)

    def refresh(self) -> bool:
        """New data arrived: repaint when it shows, i.e. when time moved by a pixel of the shown range (about
        5 s in the hour view, 2 min in the day view) or a marker was added; True when it repaints."""
        window, step = RANGES[self.range_name]
        now = self.history.clock()
        width = max(self.width() - self._axis_width(), 1)
        key = (len(self.history.markers), self.history.markers[-1].at if self.history.markers else None)
        due = now - self._painted_at >= max(window / width, step) or key != self._painted_markers
        if due:
            self._painted_at, self._painted_markers = now, key
            self.update()
        return due

    def set_range(self, range_name: str) -> None:
        """Show the last "hour" or the last "day"."""
        if range_name not in RANGES:
            raise ValueError(f"unknown timeline range {range_name!r}: expected one of {', '.join(RANGES)}")
        if range_name != self.range_name:
            self.range_name = range_name
            self._painted_at = float("-inf")
            self.hover = None
            self._describe()
            self.update()

    def _describe(self) -> None:
        self.setAccessibleName(f"VRAM timeline, last {self.range_name}")

    # --- geometry ------------------------------------------------------------------------------

    def _axis_width(self) -> int:
        return self.fontMetrics().horizontalAdvance("000.0 GiB") + 6

    def _legend_height(self) -> int:
        return self.fontMetrics().height() + 6

    def _bands(self) -> list[tuple[int, QRectF]]:
        gpus = self.history.gpus()
        if not gpus:
            return []
        fm = self.fontMetrics()
        top = self._legend_height()
        left = self._axis_width()
        height = self.height() - top - fm.height() - 4
        band_h = height / len(gpus)
        return [
            (gpu, QRectF(left + 0.5, top + i * band_h + 0.5, self.width() - left - 2.0, band_h - 6))
            for i, gpu in enumerate(gpus)
        ]

    def _x_of(self, area: QRectF, now: float, at: float) -> float:
        window, _ = RANGES[self.range_name]
        return area.left() + area.width() * (1 - (now - at) / window)

    # --- hover ---------------------------------------------------------------------------------

    def hover_at(self, pos: QPointF) -> Hover | None:
        """The sample under `pos`: the band's GPU, the sample nearest in time."""
        now = self.history.clock()
        window, _ = RANGES[self.range_name]
        for gpu, area in self._bands():
            if not (area.top() <= pos.y() <= area.bottom() and area.left() <= pos.x() <= area.right()):
                continue
            series = self.history.series(gpu, self.range_name)
            if not series:
                return None
            at = now - window * (1 - (pos.x() - area.left()) / max(area.width(), 1.0))
            nearest = min(series, key=lambda s: abs(s.at - at))
            if abs(nearest.at - at) > window / 20:  # nothing recorded near there (before the app started)
                return None
            return Hover(gpu, nearest, max(now - nearest.at, 0.0))
        return None

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        self.hover = self.hover_at(event.position())
        self._hover_at = event.position() if self.hover else None
        self.setToolTip(self.hover.text() if self.hover else "")
        self.update()

    def leaveEvent(self, _event: object) -> None:
        self.hover = None
        self._hover_at = None
        self.update()

    # --- painting ------------------------------------------------------------------------------

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
        self._paint_legend(p)
        bands = self._bands()
        if not bands:
            p.setPen(text)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Collecting VRAM history ...")
            return
        now = self.history.clock()
        for gpu, area in bands:
            self._paint_gpu(p, area, gpu, now)
        p.setPen(text)
        y = self.height() - fm.descent() - 1
        area = bands[-1][1]
        window, _ = RANGES[self.range_name]
        for fraction in (0.0, 0.25, 0.5, 0.75):
            label = f"-{_duration(window * (1 - fraction))}"
            x = area.left() + area.width() * fraction
            p.drawLine(QPointF(x, area.bottom()), QPointF(x, area.bottom() + 3))
            p.drawText(QPointF(x if fraction == 0 else x - fm.horizontalAdvance(label) / 2, y), label)
        p.drawText(QPointF(area.right() - fm.horizontalAdvance("now"), y), "now")
        if self.hover is not None and self._hover_at is not None:
            self._paint_hover(p, self.hover, self._hover_at)

    def legend_items(self) -> list[str]:
        return [SEGMENTS[key][0] for key in LAYERS] + list(MARKER_TEXT.values())

    def _paint_legend(self, p: QPainter) -> None:
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.WindowText)
        fm = self.fontMetrics()
        x = float(self._axis_width())
        box = fm.height() - 4
        for key in LAYERS:
            label, colour, pattern = SEGMENTS[key]
            swatch = QRectF(x, 3, box * 1.6, box)
            fill, over = segment_brushes(colour, pattern, pal)
            p.fillRect(swatch, fill)
            if over is not None:
                p.fillRect(swatch, over)
            p.setPen(QPen(text, 1))
            p.drawRect(swatch)
            x += swatch.width() + 4
            p.drawText(QPointF(x, fm.ascent() + 1), label)
            x += fm.horizontalAdvance(label) + 12
        for label in MARKER_TEXT.values():
            if x + fm.horizontalAdvance(label) > self.width():
                break
            p.drawText(QPointF(x, fm.ascent() + 1), label)
            x += fm.horizontalAdvance(label) + 12

    def _paint_gpu(self, p: QPainter, area: QRectF, gpu: int, now: float) -> None:
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.WindowText)
        fm = self.fontMetrics()
        series = self._thin(self.history.series(gpu, self.range_name), int(area.width()))
        p.fillRect(area, pal.color(QPalette.ColorRole.Base))
        total = max(series[-1].total_bytes if series else 1, 1)

        def y_of(value: int) -> float:
            return area.bottom() - area.height() * min(value, total) / total

        # the GiB axis: round steps, light grid lines across the band
        max_ticks = max(int(area.height() // (fm.height() + 2)), 1)
        step = gib_step(total, max_ticks)
        grid = QPen(pal.color(QPalette.ColorRole.Mid), 1, Qt.PenStyle.DotLine)
        for value in range(0, total + 1, step):
            y = y_of(value)
            p.setPen(grid)
            p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            p.setPen(text)
            label = format_bytes(value) if value else "0"
            p.drawText(
                QPointF(
                    area.left() - 4 - fm.horizontalAdvance(label), min(y + fm.ascent() / 2, area.bottom())
                ),
                label,
            )
        if series:
            lower = [0] * len(series)
            xs = [self._x_of(area, now, s.at) for s in series]
            for layer, key in enumerate(LAYERS):
                upper = [lo + s.stack[layer] for lo, s in zip(lower, series, strict=True)]
                poly = QPolygonF(
                    [QPointF(x, y_of(u)) for x, u in zip(xs, upper, strict=True)]
                    + [QPointF(x, y_of(lo)) for x, lo in reversed(list(zip(xs, lower, strict=True)))]
                )
                _, colour, pattern = SEGMENTS[key]
                fill, over = segment_brushes(colour, pattern, pal)
                path = QPainterPath()
                path.addPolygon(poly)
                p.fillPath(path, fill)
                if over is not None:
                    p.fillPath(path, over)
                lower = upper
        last_label_end = float("-inf")
        for marker, x in self.markers_in_view(gpu, area, now):
            p.setPen(QPen(text, 1, Qt.PenStyle.DashLine))
            p.drawLine(QPointF(x, area.top()), QPointF(x, area.bottom()))
            glyph = MARKER_TEXT.get(marker.kind, marker.kind)
            width = fm.horizontalAdvance(glyph)
            # near the right edge ("now") the label goes to the left of its line, so it is never cut
            left = x + 3 if x + 3 + width <= area.right() else x - 3 - width
            if left > last_label_end:  # labels never overlap (a busy day shows the lines only)
                p.setPen(text)
                p.drawText(QPointF(left, area.top() + fm.ascent()), glyph)
                last_label_end = left + width + 4
        p.setPen(QPen(text, 1))
        p.drawRect(area)
        name = f"GPU {gpu}"
        plate = QRectF(area.left() + 2, area.top() + 2, fm.horizontalAdvance(name) + 6, fm.height())
        if last_label_end < plate.right() + 1:
            p.fillRect(plate, pal.color(QPalette.ColorRole.Base))
            p.drawText(plate, Qt.AlignmentFlag.AlignCenter, name)

    def markers_in_view(
        self, gpu: int, area: QRectF | None = None, now: float | None = None
    ) -> list[tuple[Marker, float]]:
        """The markers of one GPU inside the shown range, with the x where each is drawn."""
        now = self.history.clock() if now is None else now
        if area is None:
            area = dict(self._bands()).get(gpu)
            if area is None:
                return []
        window, _ = RANGES[self.range_name]
        return [
            (m, self._x_of(area, now, m.at))
            for m in self.history.markers
            if m.gpu == gpu and m.at >= now - window
        ]

    def _paint_hover(self, p: QPainter, hover: Hover, at: QPointF) -> None:
        """A line at the mouse and the values in a box beside it (below the pointer, never off the widget)."""
        pal = self.palette()
        fm = self.fontMetrics()
        x = at.x()
        p.setPen(QPen(pal.color(QPalette.ColorRole.Highlight), 1))
        p.drawLine(QPointF(x, self._legend_height()), QPointF(x, self.height() - fm.height() - 4))
        label = hover.text()
        w, h = fm.horizontalAdvance(label) + 10, fm.height() + 4
        left = min(max(x + 8, 0.0), max(self.width() - w - 2, 0.0))
        top = at.y() - 8 - h if at.y() > self.height() / 2 else at.y() + 16  # away from the time axis
        top = min(max(top, 0.0), max(self.height() - h - 1, 0.0))
        box = QRectF(left, top, w, h)
        p.fillRect(box, pal.color(QPalette.ColorRole.Base))
        p.setPen(pal.color(QPalette.ColorRole.Text))
        p.drawRect(box)
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, label)

    @staticmethod
    def _thin(series: list[Sample], width: int) -> list[Sample]:
        """What is worth drawing into `width` pixels: of a run of equal samples only its ends, then the
        fullest sample of each pixel's time (a spike stays visible). The polygons' vertex count is what a
        repaint costs, and VRAM use is mostly flat with steps (docs/BENCHMARKS.md)."""
        out: list[Sample] = []
        for _, group in itertools.groupby(series, key=lambda s: (s.stack, s.total_bytes)):
            run = list(group)
            out.append(run[0])
            if len(run) > 1:
                out.append(run[-1])
        if len(out) <= width or width <= 0:
            return out
        start, span = out[0].at, max(out[-1].at - out[0].at, 1e-9)
        columns: dict[int, Sample] = {}
        for sample in out:
            column = int((sample.at - start) / span * (width - 1))
            kept = columns.get(column)
            if kept is None or sample.used_bytes > kept.used_bytes:
                columns[column] = sample
        return [columns[c] for c in sorted(columns)]
