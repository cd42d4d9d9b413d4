"""A guard against a reference-count bug in PySide6 6.12.0 (on Python 3.11, where True is not immortal).

`SignalInstance.emit()` returns True without taking a reference for it, so every emit from Python drops one
reference to True. A process starts with about 2 000; the engine thread emits 10 to 20 times a second, so
after a few minutes Python aborts with "Fatal Python error: bool_dealloc: deallocating True or False".
`emit()` below gives the reference back, but only where a probe at import shows the bug, so it is a no-op
on a fixed PySide6 (and on Python 3.12+, where True is immortal).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from PySide6.QtCore import QObject, Signal

_py_incref = ctypes.pythonapi.Py_IncRef
_py_incref.argtypes = [ctypes.py_object]
_py_incref.restype = None

PROBES = 8


class _Probe(QObject):
    ping = Signal()


def _probe_emit_steals_a_reference() -> bool:
    probe = _Probe()
    results = []
    before = sys.getrefcount(True)
    for _ in range(PROBES):
        results.append(probe.ping.emit())  # the list holds a reference to each result, as callers do
    lost = before + PROBES - sys.getrefcount(True)
    if lost >= PROBES:  # give back what the probe itself cost
        for result in results:
            _py_incref(result)
        return True
    return False


EMIT_LOSES_A_REFERENCE = _probe_emit_steals_a_reference()


def emit(signal: Any, *args: Any) -> None:
    """`signal.emit(*args)`, without the reference leak of the affected PySide6 versions."""
    result = signal.emit(*args)
    if EMIT_LOSES_A_REFERENCE and result is not None:
        _py_incref(result)
