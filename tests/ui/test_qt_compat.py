"""The emit guard: thousands of emits must not eat the references to True (PySide6 6.12.0 does)."""

from __future__ import annotations

import sys
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.ui.qt_compat import emit


class Source(QObject):
    ping = Signal(object)


def test_emit_keeps_the_reference_count_of_true(qapp: Any) -> None:
    source = Source()
    received: list[int] = []
    source.ping.connect(received.append)
    before = sys.getrefcount(True)
    for i in range(3000):  # a GUI at 10 ticks a second does this in five minutes
        emit(source.ping, i)
    assert len(received) == 3000
    assert sys.getrefcount(True) - before >= 0
