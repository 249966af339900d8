"""What every voice converter shares: the pitch check and the per-stage timer (no converter imports
another through here, so the converters and the RVC module do not import each other)."""

from __future__ import annotations

import time
from typing import Any

from ..config import PITCH_RANGE
from ..errors import MirageError


def check_pitch(value: Any) -> float:
    """A pitch shift in semitones, -24..+24, or a one-line error."""
    v = float(value)
    lo, hi = PITCH_RANGE
    if not lo <= v <= hi:
        raise MirageError(f"pitch {v:+g} is out of range", f"use {lo:+g}..{hi:+g} semitones")
    return v


class _Stage:
    """``with _Stage(timings, "f0"): ...`` adds elapsed ms to timings["f0"]."""

    __slots__ = ("timings", "name", "t")

    def __init__(self, timings: dict, name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = self.timings.get(self.name, 0.0) + (time.perf_counter() - self.t) * 1000.0
