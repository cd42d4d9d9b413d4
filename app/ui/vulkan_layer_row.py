"""The settings dialog's row for the optional Vulkan layer (docs/vulkan-layer.md): whether it is installed
for this user, and one button that installs or removes it, as `vram-steward vulkan-layer install|uninstall`
does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from app.core.errors import VramError

INSTALL_TEXT = "Install"
UNINSTALL_TEXT = "Uninstall"


def _install() -> None:
    from app.core.vulkan.install import install_layer

    install_layer()


def _uninstall() -> None:
    from app.core.vulkan.install import uninstall_layer

    uninstall_layer()


def _status() -> dict[str, Any]:
    from app.core.vulkan.install import layer_status

    return layer_status()


class VulkanLayerRow(QWidget):
    """ "Installed for your games" / "Not installed" and the button that changes it. Installing compiles the
    layer with gcc on first use (about a second); a failure is shown in the row, with what to do."""

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        install: Callable[[], None] = _install,
        uninstall: Callable[[], None] = _uninstall,
        status: Callable[[], dict[str, Any]] = _status,
    ) -> None:
        super().__init__(parent)
        self._install, self._uninstall, self._status = install, uninstall, status
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.state = QLabel()
        self.state.setWordWrap(True)
        self.button = QPushButton()
        self.button.clicked.connect(self.toggle)
        row.addWidget(self.state, 1)
        row.addWidget(self.button)
        self.setToolTip(
            "An implicit Vulkan layer tells VRAM Steward when a game creates its Vulkan device, before it "
            "allocates, and waits (at most 0.75 s) until our models are freed. OpenGL games are not seen. "
            "Turn it off for one game with VRAM_STEWARD_LAYER_DISABLE=1."
        )
        self.refresh()

    def installed(self) -> bool:
        try:
            return bool(self._status().get("installed"))
        except (OSError, VramError):
            return False

    def refresh(self, problem: str | None = None) -> None:
        on = self.installed()
        text = "Installed for your Vulkan games" if on else "Not installed (games are seen by other signals)"
        self.state.setText(f"{text}. {problem}" if problem else text)
        self.button.setText(UNINSTALL_TEXT if on else INSTALL_TEXT)

    def toggle(self) -> None:
        problem = None
        try:
            (self._uninstall if self.installed() else self._install)()
        except VramError as exc:
            problem = exc.user_message()
        except OSError as exc:
            problem = f"Could not change the layer: {exc}"
        self.refresh(problem)
