"""Run work off the Qt thread and get the result back on it.

Two executors: a *serial* one for calls that change the engine (load, start, stop, set an
option, switch identity), so they happen in the order the user made them, and a small
pool for everything else (identity analysis, model checks and downloads, metrics
snapshots). Results come back through a queued Qt signal, so callbacks always run on the
Qt thread. Under qasync the same futures can be awaited with ``asyncio.wrap_future``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, Signal

from .qtcompat import emit

log = logging.getLogger(__name__)


class _Invoker(QObject):
    """Lives on the Qt thread; ``emit(self.call, fn)`` from any thread runs ``fn`` there."""

    call = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.call.connect(self._run, Qt.QueuedConnection)

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a broken callback must not take the window down
            log.exception("GUI callback failed")


class Jobs(QObject):
    """``submit(fn, ..., on_done=, on_error=)``; ``busy_changed(n)`` counts jobs in flight."""

    busy_changed = Signal(int)

    def __init__(self, parent: QObject | None = None, workers: int = 2):
        super().__init__(parent)
        self._serial = cf.ThreadPoolExecutor(1, thread_name_prefix="mirage-gui-engine")
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="mirage-gui-job")
        self._invoker = _Invoker(self)
        self._busy = 0
        self._closed = False

    @property
    def busy(self) -> int:
        return self._busy

    def submit(self, fn: Callable[..., Any], *args: Any, serial: bool = False,
               on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None,
               track: bool = True, **kwargs: Any) -> cf.Future:
        if self._closed:
            fut: cf.Future = cf.Future()
            fut.set_exception(RuntimeError("the window is closing"))
            return fut
        fut = (self._serial if serial else self._pool).submit(fn, *args, **kwargs)
        if track:
            self._set_busy(self._busy + 1)

        def deliver(f: cf.Future) -> None:
            if track:
                self._set_busy(self._busy - 1)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                if on_error is not None:
                    on_error(exc)
                else:
                    log.warning("background job failed: %s", exc)
            elif on_done is not None:
                on_done(f.result())

        fut.add_done_callback(lambda f: self._post(lambda: deliver(f)))
        return fut

    def thread(self, fn: Callable[[], Any], on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> threading.Thread:
        """Run a long job (a download) on its own daemon thread, so it never holds up the pools."""
        self._set_busy(self._busy + 1)

        def run() -> None:
            try:
                res = fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the Qt thread
                self._post(lambda e=exc: (self._set_busy(self._busy - 1), on_error(e) if on_error else None))
                return
            self._post(lambda: (self._set_busy(self._busy - 1), on_done(res) if on_done else None))

        t = threading.Thread(target=run, name="mirage-gui-long-job", daemon=True)
        t.start()
        return t

    def _post(self, fn: Callable[[], None]) -> None:
        try:
            emit(self._invoker.call, fn)
        except RuntimeError:  # the invoker is gone: the window closed
            pass

    def _set_busy(self, n: int) -> None:
        self._busy = max(0, n)
        emit(self.busy_changed, self._busy)

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self, wait: bool = True, wait_pool: bool | None = None) -> None:
        """Refuse new jobs and cancel queued ones. ``wait``: wait for the serial (engine) job
        that is running; ``wait_pool`` (default: ``wait``): also for the running pool jobs."""
        self._closed = True
        self._pool.shutdown(wait=wait if wait_pool is None else wait_pool, cancel_futures=True)
        self._serial.shutdown(wait=wait, cancel_futures=True)
