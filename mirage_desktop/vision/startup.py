"""Time to the first swapped frame: from the process's start to the first frame that leaves the
pipeline with a face swapped (model loading, the first detection and the first swap included)."""

from __future__ import annotations

import os
import time


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc; None elsewhere)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


class FirstSwap:
    """A frame subscriber that notes when the first swapped frame leaves, on the process's clock."""

    def __init__(self):
        self.t0 = time.perf_counter()
        age = process_age_s()
        self.since = "process start" if age is not None else "command start"
        self.offset = age or 0.0  # the process's age at t0
        self.at: float | None = None  # seconds since the process (or command) started
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = self.offset + time.perf_counter() - self.t0

    def __call__(self, pkt) -> None:
        if self.at is None and pkt.swapped:
            self.at = self.offset + time.perf_counter() - self.t0

    def summary(self) -> str:
        if self.at is None:
            return "no frame was swapped"
        parts = ", ".join(f"{k} at {v:.2f} s" for k, v in self.marks.items())
        return f"first swapped frame {self.at:.2f} s after {self.since}" + (f" ({parts})" if parts else "")
