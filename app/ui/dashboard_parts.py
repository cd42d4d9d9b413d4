"""The dashboard's parts: per-GPU cards, the Holders view, and the list of apps discovery found.

Each part shows what it is given and repaints only when that changed (repaints cost CPU while the window is
open). Colours come from the palette, so the parts read in light and dark themes alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.events import AppFound
from app.core.holders import ModelStatus
from app.core.units import format_bytes
from app.ui.dashboard_view import HolderGroup, gpu_card_line, holder_groups
from app.ui.gauges import VramGauge
from app.ui.presenter import GpuView

HOLDER_COLUMNS = ("Holder / model", "State", "VRAM", "RAM", "Priority", "Next")


class GpuCard(QFrame):
    """One GPU: its gauge (which names the GPU and its use) and what our holders keep on it."""

    def __init__(self, index: int, *, compact: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAccessibleName(f"GPU {index}")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 2)
        layout.setSpacing(0)
        self.gauge = VramGauge(self, compact=compact)
        self.holds = QLabel()
        self.holds.setWordWrap(True)
        layout.addWidget(self.gauge)
        layout.addWidget(self.holds)

    def title(self) -> str:
        view = self.gauge.view()
        return f"GPU {view.index} · {view.name}" if view is not None else ""

    def set_view(self, gpu: GpuView, models: Sequence[ModelStatus]) -> None:
        self.gauge.set_view(gpu)
        line = gpu_card_line(gpu.index, models)
        if line != self.holds.text():
            self.holds.setText(line)


class GpuCards(QWidget):
    """A card per GPU, each across the window (its legend needs the width) up to two GPUs; two columns of
    compact cards from three on."""

    COLUMNS = 2

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self.cards: list[GpuCard] = []

    def set_views(self, gpus: Sequence[GpuView], models: Sequence[ModelStatus]) -> None:
        if len(self.cards) != len(gpus):
            self._rebuild(len(gpus))
        for card, gpu in zip(self.cards, gpus, strict=False):
            card.set_view(gpu, models)

    def _rebuild(self, count: int) -> None:
        for card in self.cards:
            self._grid.removeWidget(card)
            card.deleteLater()
        compact = count > 1
        self.cards = [GpuCard(i, compact=compact, parent=self) for i in range(count)]
        columns = self.COLUMNS if count > 2 else 1
        for i, card in enumerate(self.cards):
            self._grid.addWidget(card, i // columns, i % columns)
        for column in range(columns):
            self._grid.setColumnStretch(column, 1)


class HoldersView(QTreeWidget):
    """Every holder (our own models, each managed app, frozen apps) with its models or processes: their
    state, what they hold in VRAM on which GPU, and in host RAM where a frozen app keeps it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setColumnCount(len(HOLDER_COLUMNS))
        self.setHeaderLabels(list(HOLDER_COLUMNS))
        self.setAccessibleName("Holders")
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.header().setStretchLastSection(True)
        self._groups: tuple[HolderGroup, ...] | None = None

    def set_models(self, models: Sequence[ModelStatus]) -> None:
        groups = holder_groups(models)
        if groups == self._groups:
            return
        self._groups = groups
        self.clear()
        if not groups:
            self.addTopLevelItem(QTreeWidgetItem(["Nothing held yet: add a model, or manage an app found."]))
            return
        for group in groups:
            top = QTreeWidgetItem([group.title, "", format_bytes(group.vram_bytes), "", "", ""])
            font = top.font(0)
            font.setBold(True)
            top.setFont(0, font)
            for row in group.rows:
                QTreeWidgetItem(
                    top, [row.name, row.state, row.vram_text, row.ram_text, str(row.priority), row.detail]
                )
            self.addTopLevelItem(top)
            top.setExpanded(True)

    def rows(self) -> list[list[str]]:
        """Every line as text, holders and their entries (tests, accessibility checks)."""
        out = []
        for i in range(self.topLevelItemCount()):
            top = self.topLevelItem(i)
            if top is None:
                continue
            out.append([top.text(c) for c in range(self.columnCount())])
            for j in range(top.childCount()):
                child = top.child(j)
                if child is not None:
                    out.append(["  " + child.text(0)] + [child.text(c) for c in range(1, self.columnCount())])
        return out


class FoundAppsView(QScrollArea):
    """Apps discovery found on this computer's loopback ports that nothing manages yet, each with a Manage
    button that saves its `[[servers]]` entry (through `manage`, the same door as the notification's
    "Manage it"; it returns False when the entry could not be saved)."""

    def __init__(
        self, manage: Callable[[str, str], bool | None] | None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._manage = manage
        self.setWidgetResizable(True)
        inner = QWidget()
        self._layout = QVBoxLayout(inner)
        self.empty = QLabel(
            "No unmanaged AI apps found. VRAM Steward looks for Ollama, LM Studio, ComfyUI, "
            "A1111/Forge, KoboldCpp, text-generation-webui, vLLM, SGLang, InvokeAI and LocalAI on "
            "their default ports every few minutes."
        )
        self.empty.setWordWrap(True)
        self._layout.addWidget(self.empty)
        self._layout.addStretch(1)
        self.setWidget(inner)
        self.found: dict[tuple[str, str], tuple[QLabel, QPushButton]] = {}

    def add(self, event: AppFound) -> None:
        key = (event.server_kind, event.url)
        if key in self.found:
            return
        row = QHBoxLayout()
        label = QLabel(f"{event.display_name} on port {event.port} ({event.url})")
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        button = QPushButton("Manage")
        button.setToolTip(
            f"Free {event.display_name}'s VRAM while you game: saves a [[servers]] entry "
            f'(kind = "{event.server_kind}") in the settings file'
        )
        button.setEnabled(self._manage is not None)
        button.clicked.connect(lambda: self._accept(key))
        row.addWidget(label, 1)
        row.addWidget(button)
        self._layout.insertLayout(self._layout.count() - 1, row)
        self.found[key] = (label, button)
        self.empty.hide()

    def _accept(self, key: tuple[str, str]) -> None:
        if self._manage is None:
            return
        label, button = self.found[key]
        base = label.text().split(": could not", 1)[0]
        if self._manage(*key) is False:  # the application said why (Events, a message)
            label.setText(f"{base}: could not save its entry (see Events)")
            return
        button.setEnabled(False)
        button.setText("Managed")
        label.setText(f"{base}: managed from now on (saved in the settings file)")

    def lines(self) -> list[str]:
        return [label.text() for label, _ in self.found.values()]

    def button(self, kind: str, url: str) -> QPushButton:
        return self.found[(kind, url)][1]
