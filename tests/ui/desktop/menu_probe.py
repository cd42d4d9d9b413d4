"""Run as `python -m tests.ui.desktop.menu_probe` on an X display: builds the tray's real QMenu from a view
with every notice active (and a long model name, and the countdown), and prints its size hint and texts as
JSON. The width test (test_menu_width.py) runs it on Xvfb, where Qt uses the xcb platform and real fonts."""

from __future__ import annotations

import dataclasses
import json

from PySide6.QtWidgets import QApplication, QMenu

from app.core.gpu.snapshot import BackendState
from app.core.holders import ModelState
from app.core.settings import Settings
from app.ui.presenter import Notice, present
from app.ui.tray import fill_menu
from tests.fixtures import ui_snapshots as snaps

# Every notice the app can show at once, as the app words them (app/cli/gui.py, app/ui/application.py).
NOTICES = (
    Notice(
        "Simulation: no NVIDIA GPU",
        "No NVIDIA GPU found: running a simulation (scenario game-launch). NVML Shared Library Not Found",
    ),
    Notice(
        "Control API off: port 8765 busy",
        "The local API cannot start: the port 127.0.0.1:8765 is already in use by another program. "
        "Without it `vram-steward status|pause|resume|evict` and API clients cannot reach this engine.",
    ),
    Notice(
        "Settings file broken: using defaults (2 problems)",
        "/home/user/.config/vram-steward/config.toml does not load, so VRAM Steward runs with its defaults",
    ),
    Notice(
        "Notifications are not shown",
        "Notifications are not shown (desktop: not available; tray-balloon: not available); "
        "they go to the log only",
    ),
)


class NoActions:
    def __getattr__(self, name: str) -> object:
        return lambda *args: None


def main() -> None:
    app = QApplication(["menu-probe"])
    models = (
        snaps.model(
            ModelState.EVICTED, name="Meta-Llama-3.1-70B-Instruct-abliterated-Q4_K_M-imatrix-final.gguf"
        ),
        snaps.model(ModelState.RESIDENT, name="qwen2.5-coder-14b"),
    )
    snapshot = snaps.snapshot(
        "cooldown",
        models=models,
        backend_state=BackendState.ERROR,
        message="NVML: the NVIDIA driver is not loaded (nvmlInit failed: Driver Not Loaded)",
    )
    snapshot = dataclasses.replace(snapshot, resume_at=snapshot.telemetry.taken_at + 587.0)
    view = present(snapshot, Settings(), notices=NOTICES, error_icon=True)
    menu = QMenu()
    fill_menu(menu, view, NoActions())  # type: ignore[arg-type]
    hint = menu.sizeHint()
    texts = [a.text() for a in menu.actions() if not a.isSeparator()]
    print(
        json.dumps(
            {"platform": app.platformName(), "width": hint.width(), "height": hint.height(), "texts": texts}
        )
    )


if __name__ == "__main__":
    main()
