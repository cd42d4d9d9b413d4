"""The compact popup a left click on the tray icon opens: the state in words, the countdown before models come
back (with Reload now), the notices' short lines and a gauge per GPU."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.ui.gauges import VramGauge
from app.ui.presenter import TrayView


class TrayPopup(QFrame):
    def __init__(
        self,
        open_dashboard: Callable[[], None],
        parent: QWidget | None = None,
        *,
        reload_now: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(parent, Qt.WindowType.Popup)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAccessibleName("VRAM Steward status")
        self._layout = QVBoxLayout(self)
        self.title = QLabel()
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self._layout.addWidget(self.title)
        wait_row = QHBoxLayout()
        self.wait = QLabel()
        self.reload_button = QPushButton("&Reload now")
        self.reload_button.setEnabled(reload_now is not None)
        if reload_now is not None:
            self.reload_button.clicked.connect(reload_now)
        wait_row.addWidget(self.wait, 1)
        wait_row.addWidget(self.reload_button)
        self._layout.addLayout(wait_row)
        self.notes = QLabel()
        self.notes.setWordWrap(True)
        self._layout.addWidget(self.notes)
        self._gauges: list[VramGauge] = []
        self._gauge_box = QVBoxLayout()
        self._layout.addLayout(self._gauge_box)
        button = QPushButton("Open &dashboard")
        self._open_dashboard = open_dashboard
        button.clicked.connect(self._dashboard_clicked)
        self._layout.addWidget(button)
        self.setMinimumWidth(340)

    def _dashboard_clicked(self) -> None:
        self.hide()
        self._open_dashboard()

    def set_view(self, view: TrayView) -> None:
        self.title.setText(view.title)
        self.wait.setText(view.wait_text)
        self.wait.setVisible(bool(view.wait_text))
        self.reload_button.setVisible(view.reload_enabled)
        self.notes.setText("\n".join(view.notes))
        self.notes.setVisible(bool(view.notes))
        while len(self._gauges) < len(view.gpus):
            gauge = VramGauge(self, compact=True)
            self._gauges.append(gauge)
            self._gauge_box.addWidget(gauge)
        for gauge, gpu in zip(self._gauges, view.gpus, strict=False):
            gauge.set_view(gpu)
            gauge.setMinimumWidth(gauge.sizeHint().width())
            gauge.show()
        for gauge in self._gauges[len(view.gpus) :]:
            gauge.hide()

    def show_near(self, point: QPoint) -> None:
        """Open next to the tray icon, kept on the screen that holds it."""
        self.adjustSize()
        screen = self.screen().availableGeometry() if self.screen() else None
        x, y = point.x() - self.width() // 2, point.y() - self.height() - 8
        if screen is not None:
            x = max(screen.left(), min(x, screen.right() - self.width()))
            if y < screen.top():
                y = point.y() + 8
            y = max(screen.top(), min(y, screen.bottom() - self.height()))
        self.move(x, y)
        self.show()
        self.activateWindow()
