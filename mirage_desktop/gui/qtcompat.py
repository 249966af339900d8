"""Work-arounds for Qt binding bugs, found by probing at import (never by version number).

PySide6 6.12's ``SignalInstance.emit`` returns ``True`` without a new reference, so every
emit from Python takes one reference from ``True``; after a few thousand emits (30 preview
frames a second do that in minutes) CPython aborts with "bool_dealloc: deallocating True
or False". :func:`emit` emits and, only where the probe saw the bug, gives the reference back.
All emits in ``mirage_desktop.gui`` go through it.

Worse, the same build returns ``None`` borrowed from every void method on Python < 3.12
(``QPainter.setPen``, ``QPainterPath.lineTo``...; it looks built for 3.12's immortal
singletons), so painting alone drains ``None``. Where the probe sees that, :func:`guard_singletons`
does what Python 3.12 does itself: it gives ``None``, ``True`` and ``False`` a huge reference
count so they can never be freed. Report upstream / pin PySide6 < 6.12 on Python < 3.12.
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


def _void_returns_borrowed_none(n: int = 16) -> bool:
    from PySide6.QtGui import QPainterPath

    path = QPainterPath()
    before = sys.getrefcount(None)
    for _ in range(n):
        path.lineTo(1.0, 1.0)
    lost = before - sys.getrefcount(None)
    for _ in range(max(0, lost)):
        _incref(None)
    return lost >= n


VOID_RETURNS_BORROWED_NONE = _void_returns_borrowed_none()
_GUARD = 1 << 40


def guard_singletons() -> bool:
    """On Python < 3.12 with a binding that leaks them: make None/True/False practically immortal."""
    if sys.version_info >= (3, 12) or not (VOID_RETURNS_BORROWED_NONE or EMIT_RETURNS_BORROWED):
        return False
    if sys.getrefcount(None) > _GUARD // 2:
        return True  # already done
    for obj in (None, True, False):
        # ob_refcnt is the first field of every object in a release build of CPython 3.10/3.11
        ctypes.c_ssize_t.from_address(id(obj)).value += _GUARD
    return True


GUARDED = guard_singletons()


def emit(signal, *args):
    """``signal.emit(*args)``, without the reference leak described above."""
    r = signal.emit(*args)
    if EMIT_RETURNS_BORROWED and (r is True or r is False):
        _incref(r)
    return r
