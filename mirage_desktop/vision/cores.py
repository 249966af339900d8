"""Sharing a few CPU cores between the detector and the swapper.

On the CPU provider each onnxruntime session spreads one call over all cores. Run side by side
(the detector on its thread, the swapper on the worker) the two calls each get half the cores,
with the cost of switching between them on top: measured on 2 cores, SCRFD-10G took 391 ms inside
the pipeline against 163 ms alone, its results came ~0.9 s late and it ran once every ~70 captured
frames. The gate runs the two models' calls one at a time instead, each on all cores, and gives
the detector the next turn when both wait, so a detection waits for at most one swap. On a GPU
the gate is off (the calls queue on the device anyway).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator


class CoreGate:
    """One model call at a time; a ``priority`` call (the detector's) goes before waiting others."""

    def __init__(self, metrics=None):
        self.metrics = metrics
        self._cv = threading.Condition()
        self._busy = False
        self._priority_waiting = 0
        self.waiting = 0  # calls waiting for their turn now

    @contextlib.contextmanager
    def turn(self, priority: bool = False, name: str = "") -> Iterator[None]:
        t0 = time.perf_counter()
        with self._cv:
            if priority:
                self._priority_waiting += 1
            self.waiting += 1
            self._cv.notify_all()
            try:
                while self._busy or (not priority and self._priority_waiting):
                    self._cv.wait()
            finally:
                self.waiting -= 1
                if priority:
                    self._priority_waiting -= 1
            self._busy = True
        waited = (time.perf_counter() - t0) * 1000
        if self.metrics is not None and name:
            self.metrics.record(f"gate.wait.{name}", waited)
        try:
            yield
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()


def share_cores(handles: list, priority: list, metrics=None) -> CoreGate | None:
    """Put the CPU sessions among ``handles`` (and the ``priority`` ones, which go first) behind
    one gate. None (no gate) when any of them runs on another provider."""
    every = [h for h in list(handles) + list(priority) if h is not None]
    if not every or any(getattr(h, "provider", "") != "CPUExecutionProvider" for h in every):
        return None
    gate = CoreGate(metrics)
    for h in handles:
        if h is not None:
            h.gate, h.gate_priority = gate, False
    for h in priority:
        if h is not None:
            h.gate, h.gate_priority = gate, True
    return gate
