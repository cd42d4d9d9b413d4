"""The window a broken settings file opens at start: each problem (file, line, key, what was expected),
"Open file" (the system's editor) and "Check again" (load it again; when it loads, the app uses it).

The app runs on the defaults meanwhile, with the red icon; nothing writes to the broken file (the config
writer refuses to overwrite a file that does not load), so the user's text is never lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QListWidget, QPushButton, QVBoxLayout, QWidget

from app.core.config import ConfigErrors, load_settings
from app.core.errors import ConfigError, VramError
from app.core.settings import Settings


def problems_of(exc: VramError) -> tuple[str, ...]:
    """Each problem of a settings file that did not load, in words."""
    if isinstance(exc, ConfigErrors):
        return tuple(p.message for p in exc.problems)
    return (exc.user_message() if isinstance(exc, ConfigError) else str(exc),)


class SettingsProblemsWindow(QDialog):
    """Names every problem of the settings file; `fixed` carries the settings once the file loads."""

    fixed = Signal(object)  # Settings

    def __init__(
        self,
        path: Path,
        problems: Sequence[str],
        *,
        load: Callable[[Path], Settings] = load_settings,
        open_url: Callable[[QUrl], bool] = QDesktopServices.openUrl,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.path = Path(path)
        self._load = load
        self._open_url = open_url
        self.setWindowTitle("VRAM Steward: the settings file has problems")
        layout = QVBoxLayout(self)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.problems = QListWidget(self)
        self.problems.setAccessibleName("Problems in the settings file")
        self.problems.setWordWrap(True)
        layout.addWidget(self.problems, 1)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        buttons = QHBoxLayout()
        self.open_button = QPushButton("&Open file")
        self.open_button.clicked.connect(self.open_file)
        self.check_button = QPushButton("&Check again")
        self.check_button.setDefault(True)
        self.check_button.clicked.connect(self.check_again)
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.check_button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.set_problems(problems)
        self.resize(640, 320)

    def set_problems(self, problems: Sequence[str]) -> None:
        count = len(problems)
        self.summary.setText(
            f"{self.path} has {count} problem{'s' if count != 1 else ''}. VRAM Steward runs with its default "
            "settings until the file loads; it does not change the file. Fix it, then Check again."
        )
        self.problems.clear()
        self.problems.addItems(list(problems))

    def problem_lines(self) -> list[str]:
        return [self.problems.item(i).text() for i in range(self.problems.count())]

    def open_file(self) -> None:
        if not self._open_url(QUrl.fromLocalFile(str(self.path))):
            self.status.setText(f"No application opens {self.path}: open it in a text editor yourself.")

    def check_again(self) -> None:
        """Load the file again: the problems it still has, or, when it loads, its settings (`fixed`)."""
        try:
            settings = self._load(self.path)
        except VramError as exc:
            self.set_problems(problems_of(exc))
            self.status.setText("Still not loadable: see the problems above.")
            return
        except OSError as exc:
            self.set_problems([f"{self.path}: {exc}"])
            return
        self.status.setText("The settings file loads: VRAM Steward uses it now.")
        self.fixed.emit(settings)
        self.accept()
