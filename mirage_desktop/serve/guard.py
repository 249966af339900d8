"""What a client may send: a frame-size guard and the invalid-frame window behind anomaly
abandonment (a session sending more than 30 % invalid frames over 200 is closed)."""

from __future__ import annotations

import collections

ANOMALY_WINDOW = 200
ANOMALY_FRACTION = 0.30


class FrameGuard:
    """Counts each incoming frame valid or not over the last ``window`` frames."""

    def __init__(self, max_width: int, max_height: int, window: int = ANOMALY_WINDOW,
                 fraction: float = ANOMALY_FRACTION):
        self.max_width, self.max_height = int(max_width), int(max_height)
        self.window, self.fraction = int(window), float(fraction)
        self._marks: collections.deque = collections.deque(maxlen=self.window)
        self._bad = 0
        self.invalid = 0  # lifetime
        self.by_reason: collections.Counter = collections.Counter()

    def check_size(self, width: int, height: int) -> str | None:
        """None for an acceptable frame, else the reason it is rejected."""
        if width <= 0 or height <= 0:
            return "empty"
        # either orientation: a portrait camera is as legitimate as a landscape one
        long_side, short_side = max(width, height), min(width, height)
        if long_side > max(self.max_width, self.max_height) or short_side > min(self.max_width, self.max_height):
            return "oversize"
        return None

    def note(self, reason: str | None) -> None:
        if len(self._marks) == self._marks.maxlen and self._marks[0]:
            self._bad -= 1
        bad = reason is not None
        self._marks.append(bad)
        if bad:
            self._bad += 1
            self.invalid += 1
            self.by_reason[reason] += 1

    def anomaly(self) -> str | None:
        """Why the session should be abandoned, once a full window is over the fraction."""
        if len(self._marks) < self.window or self._bad <= self.fraction * self.window:
            return None
        return (f"anomaly: {self._bad} of the last {self.window} frames were invalid "
                f"(over {self.fraction:.0%}: {', '.join(f'{k} {v}' for k, v in sorted(self.by_reason.items()))})")
