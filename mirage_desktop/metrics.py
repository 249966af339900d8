"""Latency histograms (P50/P95/P99), counters and gauges, with cheap snapshots.

Recording is O(1) and lock-light so it can sit on the hot path; percentiles are computed
only when somebody asks for a snapshot (the GUI a few times a second, the CLI at the end).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from typing import Iterator

import numpy as np


class LatencyHistogram:
    """Rolling window of the last ``window`` samples (milliseconds) plus lifetime totals."""

    def __init__(self, window: int = 2048):
        self._buf = np.zeros(window, dtype=np.float64)
        self._n = 0  # lifetime count
        self._sum = 0.0
        self._max = 0.0
        self._lock = threading.Lock()

    def record(self, ms: float) -> None:
        with self._lock:
            self._buf[self._n % self._buf.size] = ms
            self._n += 1
            self._sum += ms
            if ms > self._max:
                self._max = ms

    @property
    def count(self) -> int:
        return self._n

    @property
    def total(self) -> float:
        """Lifetime sum of all samples (ms)."""
        return self._sum

    def values(self) -> np.ndarray:
        with self._lock:
            n = min(self._n, self._buf.size)
            return self._buf[:n].copy()

    def summary(self) -> dict:
        vals = self.values()
        if vals.size == 0:
            return {"count": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}
        p50, p95, p99 = np.percentile(vals, [50, 95, 99])
        return {
            "count": self._n,
            "p50": float(p50),
            "p95": float(p95),
            "p99": float(p99),
            "mean": float(self._sum / self._n),
            "max": float(self._max),
        }


class Metrics:
    """A registry of named histograms, counters and gauges."""

    def __init__(self, window: int = 2048):
        self._window = window
        self._hist: dict[str, LatencyHistogram] = {}
        self._counters: dict[str, int] = defaultdict(int)
        self._gauges: dict[str, object] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when a counter moves
        self._t0 = time.perf_counter()

    def histogram(self, name: str) -> LatencyHistogram:
        h = self._hist.get(name)
        if h is None:
            with self._lock:
                h = self._hist.setdefault(name, LatencyHistogram(self._window))
        return h

    def record(self, name: str, ms: float) -> None:
        self.histogram(name).record(ms)

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.histogram(name).record((time.perf_counter() - t) * 1000.0)

    def total(self, name: str) -> float:
        h = self._hist.get(name)
        return h.total if h is not None else 0.0

    def incr(self, name: str, n: int = 1) -> None:
        with self._changed:
            self._counters[name] += n
            self._changed.notify_all()

    def counter(self, name: str) -> int:
        return self._counters.get(name, 0)

    def wait_for(self, name: str, n: int, timeout: float | None = None) -> bool:
        """Block until counter ``name`` is at least ``n``: True, or False after ``timeout`` s.

        For code (and tests) that need "after N frames / runs / errors" without polling."""
        with self._changed:
            return self._changed.wait_for(lambda: self._counters.get(name, 0) >= n, timeout)

    def set_gauge(self, name: str, value: object) -> None:
        self._gauges[name] = value

    def gauge(self, name: str, default: object = None) -> object:
        return self._gauges.get(name, default)

    def reset(self) -> None:
        with self._lock:
            self._hist.clear()
            self._counters.clear()
            self._t0 = time.perf_counter()

    def snapshot(self) -> dict:
        """A JSON-ready dict: {"uptime_s", "stages": {name: summary}, "counters", "gauges"}."""
        with self._lock:
            hists = dict(self._hist)
            counters = dict(self._counters)
            gauges = dict(self._gauges)
        return {
            "time": time.time(),
            "uptime_s": time.perf_counter() - self._t0,
            "stages": {k: h.summary() for k, h in sorted(hists.items())},
            "counters": counters,
            "gauges": gauges,
        }


def format_table(snapshot: dict, stages: list[str] | None = None) -> str:
    """Human table of P50/P95/P99 per stage."""
    rows = [f"{'stage':<22}{'count':>8}{'P50 ms':>10}{'P95 ms':>10}{'P99 ms':>10}"]
    for name, s in snapshot["stages"].items():
        if stages and name not in stages:
            continue
        if not s["count"]:
            continue
        rows.append(f"{name:<22}{s['count']:>8}{s['p50']:>10.2f}{s['p95']:>10.2f}{s['p99']:>10.2f}")
    return "\n".join(rows)
