"""Work-arounds for Qt binding bugs, found by probing at import (never by version number).

PySide6 6.12's ``SignalInstance.emit`` returns ``True`` without a new reference, so every
emit from Python takes one reference from ``True``; after a few thousand emits (30 preview
frames a second do that in minutes) CPython aborts with "bool_dealloc: deallocating True
or False". :func:`emit` emits and, only where the probe saw the bug, gives the reference back.
All emits in ``mirage_desktop.gui`` go through it.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = [ctypes.py_object]
_incref.restype = None


class _Probe(QObject):
    ping = Signal()


def _emit_borrows_result(n: int = 8) -> bool:
    """Emit ``n`` times, dropping the results; a correct binding leaves True's count as it was."""
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(n):
        probe.ping.emit()
    lost = before - sys.getrefcount(True)
    for _ in range(max(0, lost)):  # give back what the probe took
        _incref(True)
    return lost >= n


EMIT_RETURNS_BORROWED = _emit_borrows_result()


def emit(signal, *args):
    """``signal.emit(*args)``, without the reference leak described above."""
    r = signal.emit(*args)
    if EMIT_RETURNS_BORROWED and (r is True or r is False):
        _incref(r)
    return r
