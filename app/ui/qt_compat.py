"""A start-up check for a Qt binding that cannot run for long.

PySide6 6.12.0 on Python 3.11 (where None and True are not immortal) drops a reference to None on every call
of a Qt method that returns nothing (setText, fillRect, menu.clear(), ...) and to True on every
`Signal.emit()`. Python aborts once the count reaches zero ("Fatal Python error: none_dealloc"): measured
here, the tray app with the simulator died after 97 s. The check calls one such method a few times and
compares the reference count, so a fixed PySide6 (or Python 3.12+) passes it whatever its version number.
"""

from __future__ import annotations

import sys

PROBES = 16


def binding_problem() -> str | None:
    """None when the installed PySide6 keeps its reference counts; otherwise what to do, in words."""
    import PySide6
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(PROBES):
        probe.setObjectName("probe")
    lost = before - sys.getrefcount(None)
    if lost < PROBES:
        return None
    import ctypes

    incref = ctypes.pythonapi.Py_IncRef
    incref.argtypes = [ctypes.py_object]
    for _ in range(lost):  # give back what the probe took
        incref(None)
    python = ".".join(map(str, sys.version_info[:2]))
    return (
        f"PySide6 {PySide6.__version__} has a reference-count bug on Python {python} that crashes the tray "
        "app within minutes. Install another version: pip install 'PySide6-Essentials>=6.6,!=6.12.0' "
        "(6.11.3 works), or use Python 3.12 or newer."
    )
