"""Bounded, drop-oldest hand-off between threads: a late frame is replaced, never queued."""

from __future__ import annotations

import logging
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


class TrackWorker:
    """A model run per tracked face on a thread of its own, for a stage that must never hold up
    the video (the enhancer, the face parser).

    The video thread hands over, as one list, the newest due work of each face: ``(track id,
    payload, frame index, generation)``; an unread list is replaced by a newer one (the stage is
    told through ``on_superseded``). The thread runs ``work(payload)`` for each and, under ``lock`` and only if
    :attr:`generation` is still the one the work was asked under, calls ``store(track id, result,
    frame index)`` (result None: the run failed). ``inflight`` holds the faces asked for and not
    answered yet, so a face is never queued twice. ``invalidate()`` (a reset) drops every answer
    still coming. Guard ``inflight`` and ``generation`` with ``lock`` (shared with the stage).
    """

    def __init__(self, name: str, lock, work: Callable[[Any], Any], store: Callable[[int, Any, int], None],
                 on_superseded: Callable[[], None] | None = None):
        self.name, self.lock, self.work, self.store = name, lock, work, store
        self.on_superseded = on_superseded
        self.inflight: set[int] = set()
        self.generation = 0
        self.finished = threading.Event()  # set each time the thread has finished a list
        self._slot = LatestSlot(on_drop=self._dropped)
        self._thread: threading.Thread | None = None
        self._retired = False
        self._life = threading.Lock()  # starting the thread and retiring are one step each

    def submit(self, requests: list) -> None:
        """Hand over this frame's due work; starts the thread on first use (again after close(),
        never after retire())."""
        with self._life:
            if not self._retired and (self._thread is None or not self._thread.is_alive()):
                self._slot = LatestSlot(on_drop=self._dropped)
                self._thread = threading.Thread(target=self._loop, args=(self._slot,), name=self.name, daemon=True)
                self._thread.start()
            retired, slot = self._retired, self._slot
        if retired:
            with self.lock:
                self.inflight.difference_update(r[0] for r in requests)
            return
        slot.put(requests)

    def invalidate(self) -> None:
        """Forget the work in flight: its answers describe another moment. Call with ``lock`` held."""
        self.inflight.clear()
        self.generation += 1

    def close(self) -> None:
        """Stop the thread (if any) and wait for it to finish its work in hand (at most 5 s); the
        next submit starts it again."""
        with self._life:
            self._slot.close()
            t, self._thread = self._thread, None
        if t is not None:
            t.join(5.0)

    def retire(self) -> None:
        """Replaced: stop for good. Does not wait (the caller may hold locks the stream needs): the
        thread ends after the work in hand."""
        with self._life:
            self._retired = True
            self._slot.close()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _dropped(self, requests) -> None:
        if self.on_superseded is not None:
            self.on_superseded()
        with self.lock:
            self.inflight.difference_update(r[0] for r in requests)

    def _loop(self, slot: LatestSlot) -> None:
        while True:
            requests = slot.get(timeout=0.2)
            if requests is None:
                if slot.closed:
                    return
                continue
            for tid, payload, index, generation in requests:
                try:
                    result = self.work(payload)
                    with self.lock:
                        if generation != self.generation:
                            continue  # invalidated since this was asked for
                        self.store(tid, result, index)
                except Exception:  # a bug in a stage's own code: that face is asked for again
                    logging.getLogger(__name__).exception("%s: a background run failed", self.name)
                finally:
                    with self.lock:
                        if generation == self.generation:
                            self.inflight.discard(tid)
            self.finished.set()


class RunWatch:
    """Whether a stage whose model may run on another thread is failing now, judged frame by frame
    from two counts (model failures, model runs): a failure since the last frame makes it
    failing, a run since then (and no failure) makes it work again."""

    def __init__(self, errors: int | None = None, runs: int | None = None):
        self._seen = None if errors is None or runs is None else (errors, runs)
        self.failing: str | None = None

    def begin(self, errors: int, runs: int) -> None:
        """The counts before the first frame, when the watch was made without them."""
        if self._seen is None:
            self._seen = (errors, runs)

    def update(self, errors: int, runs: int, last_error: str | None) -> str | None:
        """This frame's counts; returns why the stage is failing, or None."""
        seen = self._seen if self._seen is not None else (errors, runs)
        if errors > seen[0]:
            self.failing = last_error or "error"
        elif runs > seen[1]:
            self.failing = None
        self._seen = (errors, runs)
        return self.failing

    def reset(self) -> None:
        self.failing = None
