"""Bounded, drop-oldest hand-off between threads: a late frame is replaced, never queued."""

from __future__ import annotations

import threading
from typing import Any, Callable


class LatestSlot:
    """Holds at most one item. ``put`` replaces an unread item (calling ``on_drop``)."""

    def __init__(self, on_drop: Callable[[Any], None] | None = None):
        self._item = None
        self._has = False
        self._closed = False
        self._cv = threading.Condition()
        self.on_drop = on_drop
        self.dropped = 0

    def put(self, item: Any, block: bool = False) -> None:
        """Hand over ``item``. With ``block`` wait until the previous item was taken (no drop)."""
        with self._cv:
            while block and self._has and not self._closed:
                self._cv.wait(0.1)
            if self._closed:
                return  # shutting down: not a drop under load
            if self._has:
                self.dropped += 1
                if self.on_drop:
                    self.on_drop(self._item)
            self._item, self._has = item, True
            self._cv.notify()

    def get(self, timeout: float | None = None) -> Any:
        """The newest item, or None after ``timeout`` or once closed and empty."""
        with self._cv:
            if not self._has and not self._closed:
                self._cv.wait(timeout)
            if not self._has:
                return None
            item, self._item, self._has = self._item, None, False
            self._cv.notify_all()
            return item

    def wait_taken(self, timeout: float | None = None) -> bool:
        """Wait until the slot is empty (its item was taken) or closed; False after ``timeout``."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._has or self._closed, timeout)

    def take_nowait(self) -> Any:
        return self.get(0.0)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
