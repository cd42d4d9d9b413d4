"""The per-application rules as a list with a Remove button each (the dashboard's Rules tab).

It reads the rules through a callable the application passes (its current settings' `app_rules`) and
removes one through another (which saves the file and tells the engine, app/core/notify/rules.py), so it
never holds a copy of the settings. Call `refresh()` after the settings change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.core.settings import AppRule

EMPTY_TEXT = (
    'No application rules. "Always ignore this app" on a notification adds one; so does an '
    "[[app_rules]] entry in the settings file."
)
ACTION_WORDS = {"ignore": "ignored: never a reason to free VRAM", "evict": "always gets the GPU"}


def rule_text(rule: AppRule) -> str:
    """One rule for people: what it matches and what it does."""
    what = ACTION_WORDS.get(rule.action, rule.action)
    if rule.match.lower().startswith("steam:"):
        who = f"Steam game {rule.match.split(':', 1)[1].strip()}"
    else:
        who = rule.match
    return f'{who} ({rule.action}, match = "{rule.match}"): {what}'


class RulesView(QWidget):
    """One row per rule (its text and a Remove button); a line saying how to add one when there is none."""

    def __init__(
        self,
        rules: Callable[[], Sequence[AppRule]],
        remove: Callable[[str], None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setAccessibleName("Application rules")
        self._rules = rules
        self._remove = remove
        self._layout = QVBoxLayout(self)
        self._rows: list[QWidget] = []
        self._shown: tuple[AppRule, ...] | None = None
        self.empty = QLabel(EMPTY_TEXT)
        self.empty.setWordWrap(True)
        self._layout.addWidget(self.empty)
        self._layout.addStretch(1)
        self.refresh()

    def refresh(self) -> None:
        """Show the rules as they are now (cheap when they did not change)."""
        rules = tuple(self._rules())
        if rules == self._shown:
            return
        self._shown = rules
        for row in self._rows:
            self._layout.removeWidget(row)
            row.deleteLater()
        self._rows = []
        for index, rule in enumerate(rules):
            row = QWidget(self)
            line = QHBoxLayout(row)
            line.setContentsMargins(0, 0, 0, 0)
            label = QLabel(rule_text(rule), row)
            label.setWordWrap(True)
            button = QPushButton("Remove", row)
            button.setAccessibleName(f"Remove the rule for {rule.match}")
            button.clicked.connect(lambda _=False, m=rule.match: self._remove(m))
            line.addWidget(label, 1)
            line.addWidget(button)
            self._layout.insertWidget(index, row)
            self._rows.append(row)
        self.empty.setVisible(not rules)

    def rule_lines(self) -> list[str]:
        """The rules as shown (tests)."""
        return [rule_text(rule) for rule in self._shown or ()]

    def remove_button(self, match: str) -> QPushButton:
        """The Remove button of the rule with this `match` (tests press it as a user would)."""
        for row, rule in zip(self._rows, self._shown or (), strict=True):
            if rule.match == match:
                button = row.findChild(QPushButton)
                assert isinstance(button, QPushButton)
                return button
        raise LookupError(f"no rule with match = {match!r}; shown: {self.rule_lines()}")
