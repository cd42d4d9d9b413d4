"""Screenshots of the tray menu, the popup and the dashboard for docs/screenshots/ (README).

Runs the real engine on the game-launch scenario (simulated GPU, scenario clock stepped one second per tick)
and renders the real widgets offscreen with QWidget.grab(), so it needs no display:

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/ui_screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtWidgets import QApplication, QMenu

from app.core.config import Settings
from app.core.events import Event, ModelsEvicted, Resumed
from app.core.gpu.simulated import ManualClock
from app.core.wiring import build_runtime
from app.ui import presenter
from app.ui.dashboard import Dashboard
from app.ui.popup import TrayPopup
from app.ui.timeline import TimelineHistory
from app.ui.tray import fill_menu

NOTICE = "No NVIDIA GPU found: running a simulation (scenario game-launch)."


class NoActions:
    def toggle_model(self, name: str, command: str) -> None: ...
    def set_auto_evict(self, on: bool) -> None: ...
    def set_auto_pause_for_gaming(self, on: bool) -> None: ...
    def send(self, kind: str) -> None: ...
    def show_dashboard(self) -> None: ...
    def show_settings(self) -> None: ...
    def quit(self) -> None: ...


def main(out: Path) -> None:
    for name in ("VRAM_STEWARD_CONFIG_DIR", "VRAM_STEWARD_STATE_DIR", "VRAM_STEWARD_LOG_DIR"):
        os.environ.setdefault(name, tempfile.mkdtemp(prefix="vram-steward-shots-"))
    app = QApplication(["vram-steward"])
    clock = ManualClock(0.0)
    settings = Settings()
    runtime = build_runtime(settings, simulate="game-launch", clock=clock, with_api=False, audit=False)
    steward = runtime.steward
    events: list[Event] = []
    steward.subscribe(events.append)
    history = TimelineHistory(clock=clock, window_s=180.0)
    actions = NoActions()
    dashboard = Dashboard(actions, history)
    dashboard.set_notice(NOTICE)
    dashboard.resize(820, 720)
    snapshots = {}
    for second in range(1, 150):
        clock.set(float(second))
        snapshot = steward.tick()
        view = presenter.present(snapshot, settings, notices=[NOTICE])
        history.add(view.gpus)
        for event in events:
            dashboard.add_event(event)
            if isinstance(event, ModelsEvicted):
                history.mark(event.gpu, "evicted")
            elif isinstance(event, Resumed):
                history.mark(event.gpu, "resumed")
        events.clear()
        snapshots[second] = snapshot
    out.mkdir(parents=True, exist_ok=True)

    resident = snapshots[12]
    view = presenter.present(resident, settings, notices=[NOTICE])
    menu = QMenu()
    fill_menu(menu, view, actions)
    menu.adjustSize()
    menu.grab().save(str(out / "tray-menu.png"))

    popup = TrayPopup(lambda: None)
    popup.set_view(presenter.present(snapshots[40], settings))
    popup.adjustSize()
    popup.grab().save(str(out / "tray-popup.png"))

    last = snapshots[149]
    dashboard.set_view(presenter.present(last, settings, notices=[NOTICE]), presenter.process_rows(last))
    dashboard.tabs.setCurrentIndex(2)
    dashboard.grab().save(str(out / "dashboard.png"))
    dashboard.tabs.setCurrentIndex(0)
    at_game = snapshots[40]
    dashboard.set_view(
        presenter.present(at_game, settings, notices=[NOTICE]), presenter.process_rows(at_game)
    )
    dashboard.grab().save(str(out / "dashboard-processes.png"))
    steward.shutdown()
    app.quit()
    print("\n".join(str(p) for p in sorted(out.glob("*.png"))))


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1] / "docs" / "screenshots"
    )
