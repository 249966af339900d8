"""Waiting for frames from a remote session (events, never sleeps)."""

from __future__ import annotations

import threading

import cv2
import numpy as np
from tests_support import HANG_GUARD_S

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine

SECRET = b"test-secret-0123456789abcdef-0123456789"
SIZE = 256  # frames sent: small, so encoding stays cheap on a shared CPU


def jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


class Received:
    """Frames the client got back; ``wait(n)`` blocks until ``n`` more have come."""

    def __init__(self):
        self.cond = threading.Condition()
        self.frames: list[np.ndarray] = []
        self.count = 0

    def __call__(self, img: np.ndarray, t: float) -> None:
        with self.cond:
            self.frames.append(img)
            del self.frames[:-8]
            self.count += 1
            self.cond.notify_all()

    def wait(self, n: int = 1) -> np.ndarray:
        with self.cond:
            target = self.count + n
            assert self.cond.wait_for(lambda: self.count >= target, HANG_GUARD_S), \
                f"only {self.count} frames came back"
            return self.frames[-1].copy()


def expected_swap(shared_engine, frame: np.ndarray, photo_jpeg: bytes) -> np.ndarray:
    """What the engine makes of ``frame`` locally with the identity of ``photo_jpeg``."""
    e = Engine(Settings(), metrics=None)
    e.use_shared_models(shared_engine)
    e.set_source_photos([cv2.imdecode(np.frombuffer(photo_jpeg, np.uint8), cv2.IMREAD_COLOR)], "local")
    out = frame.copy()
    assert e.process_still(out).swapped >= 1
    return out


def changed_mask(a: np.ndarray, b: np.ndarray, level: int = 40) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > level


def mean_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32))[mask].mean())


def wait_counter(metrics, name: str, n: int) -> None:
    assert metrics.wait_for(name, n, HANG_GUARD_S), f"{name} stayed at {metrics.counter(name)} (wanted {n})"
