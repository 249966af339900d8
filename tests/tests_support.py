"""Small helpers for the engine tests."""

from __future__ import annotations

import collections
import threading
import time

import cv2
import numpy as np

# Every wait in these tests is for an event (a frame, a counter, a stage the test holds); this
# timeout only stops a broken build from hanging the suite. Nothing asserts on time.
HANG_GUARD_S = 120.0


def as_foreground() -> None:
    """``preexec_fn`` for a child the test will signal as a terminal would: SIGINT and SIGQUIT at
    their defaults. A suite started in the background without job control (``./test.sh &``)
    passes them on ignored, and `mirage` keeps an ignored signal ignored (as nohup asks), so a
    Ctrl-C test would otherwise wait for ever."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def shifted(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)


def now() -> float:
    """A point in the stream's time line (the clock ``FramePacket.t_capture`` is read from).

    A frame captured after it (``pkt.t_capture > mark``) was made into a packet after it, so the
    worker took it, and read the options, the identity and the models, after it too: it was made
    entirely under what the test set before taking the mark. Frames still in flight were not."""
    return time.perf_counter()


class Frames:
    """The frames leaving an engine (its FramePackets, in output order), and waits for the ones
    captured after a mark. Subscribes on creation; works across stop/start of the engine.

    ``pkts`` keeps the newest ``history`` frames; a wait counts every frame that arrives while it
    waits, so it is exact however many frames pass."""

    def __init__(self, engine, want_original: bool = False, history: int = 256):
        self.engine = engine
        self.cond = threading.Condition()
        self.pkts: collections.deque = collections.deque(maxlen=history)  # the newest, in output order
        self.count = 0  # every frame seen
        self.created = now()
        self._waits: list = []
        self.token = engine.subscribe_frames(self._got, want_original=want_original)

    def _got(self, pkt) -> None:
        with self.cond:
            self.pkts.append(pkt)
            self.count += 1
            for mark, where, n, found in self._waits:
                if len(found) < n and pkt.t_capture > mark and (where is None or where(pkt)):
                    found.append(pkt)
            self.cond.notify_all()

    def close(self) -> None:
        self.engine.unsubscribe_frames(self.token)

    def since(self, mark: float, where=None) -> list:
        """The frames seen so far that were captured after ``mark`` (and satisfy ``where``)."""
        with self.cond:
            kept = list(self.pkts)
            # output order is capture order: if the oldest kept frame is older than the mark,
            # nothing captured after the mark was pushed out of the history
            assert self.count == len(kept) or kept[0].t_capture <= mark, \
                "Frames history too short for this mark; raise ``history``"
            return [p for p in kept if p.t_capture > mark and (where is None or where(p))]

    def after(self, mark: float, n: int = 1, where=None):
        """The n-th frame captured after ``mark`` (counting only those that satisfy ``where``,
        which runs on the output thread)."""
        with self.cond:
            found = self.since(mark, where)[:n]
            w = (mark, where, n, found)
            self._waits.append(w)
            try:
                ok = self.cond.wait_for(lambda: len(found) >= n, HANG_GUARD_S)
            finally:
                self._waits.remove(w)
            assert ok, f"only {len(found)} of {n} wanted frames came out ({self.count} frames in all)"
            return found[n - 1]

    def outputs(self, start: int, n: int) -> list:
        """Frames number ``start + 1`` .. ``start + n`` to come out (``start``: an earlier ``count``)."""
        with self.cond:
            ok = self.cond.wait_for(lambda: self.count >= start + n, HANG_GUARD_S)
            assert ok, f"only {self.count - start} of {n} more frames came out"
            offset = self.count - len(self.pkts)  # frames pushed out of the history
            assert start >= offset, "Frames history too short for this wait; raise ``history``"
            return list(self.pkts)[start - offset:start - offset + n]

    def first(self, where, mark: float | None = None):
        """The first frame captured after ``mark`` (default: since this object was made) that
        satisfies ``where``."""
        return self.after(self.created if mark is None else mark, 1, where)


def wait_counter(metrics, name: str, n: int) -> int:
    """Block until ``metrics.counter(name) >= n``; returns the counter."""
    assert metrics.wait_for(name, n, HANG_GUARD_S), f"{name} stayed at {metrics.counter(name)}, wanted {n}"
    return metrics.counter(name)


class Gate:
    """A stage the test holds: ``enter()`` (called on the pipeline's thread) signals that it was
    reached and blocks until the test calls ``open()``."""

    def __init__(self):
        self.reached = threading.Event()
        self.opened = threading.Event()

    def enter(self) -> None:
        self.reached.set()
        self.opened.wait(HANG_GUARD_S)

    def wait_reached(self) -> None:
        assert self.reached.wait(HANG_GUARD_S), "the held stage was never reached"

    def open(self) -> None:
        self.opened.set()


class CallbackSink:
    """A sink that hands every frame to a function (the engine's frame subscriptions do this for
    the app; tests use it to see exactly what a sink receives)."""

    name = "callback"

    def __init__(self, fn):
        self.fn = fn
        self.frames = 0

    def open(self, width, height, fps):
        pass

    def send(self, frame):
        self.frames += 1
        self.fn(frame)

    def close(self):
        pass

    def describe(self):
        return "callback"


def marker_face(img: np.ndarray, box: tuple, ch: int, side: int = 130) -> np.ndarray:
    """The face in ``box`` (x0, y0, x1, y1) of ``img`` as a ``side`` x ``side`` patch the marker
    detector (``build_marker_scrfd``) sees as a face: channel ``ch`` bright (200-255) all over, the
    face's texture in the other channels (below the detector's threshold), so the recognizer sees
    the real face."""
    x0, y0, x1, y1 = box
    face = cv2.resize(img[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = face * 0.7
    out[..., ch] = 200 + cv2.cvtColor(face.astype(np.uint8), cv2.COLOR_BGR2GRAY) * (55 / 255)
    return out.astype(np.uint8)
