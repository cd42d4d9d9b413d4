"""A message that makes its window taller instead of taking room from the form above it (an error in a
dialog): the window grows by what the message needs, and never shrinks below what the user made it."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QWidget


def set_growing_text(window: QWidget, label: QLabel, text: str) -> None:
    """Show `text` in `label` (hidden when empty); a visible window grows by the height the label needs."""
    before = label.height() if label.isVisible() else 0
    label.setText(text)
    label.setVisible(bool(text))
    if not text or not window.isVisible():
        return
    layout = window.layout()
    width = layout.contentsRect().width() if layout is not None else window.width()
    need = label.heightForWidth(max(width, 1))
    spacing = layout.spacing() if layout is not None and before == 0 else 0
    extra = need - before + max(spacing, 0)
    if extra > 0:
        window.resize(window.width(), window.height() + extra)
