"""Typed problems: who reports what, how bad it is, and the fix.

Each source (``detector``, ``swapper``, ``enhancer``, ``voice``, ``capture``, ``stage:swap``,
``passthrough:…``) sets and clears its own entry; the health banner colours by ``level``, never by
the wording. Levels:

* ``error`` (red): the video or the voice is not what the user asked for (no swapper, a stage
  failing on every frame, a dead camera, a silent virtual microphone);
* ``warning`` (yellow): it works, but less well than it could (the built-in fallback detector,
  an optional stage off because its model is missing, a failing enhancer);
* ``info`` (no colour): the user's own choice (face swap switched off) — shown, not alarming.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

LEVELS = ("error", "warning", "info")


@dataclass(frozen=True)
class Problem:
    source: str
    level: str
    message: str
    fix: str = ""

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"problem level {self.level!r} is not one of {LEVELS}")

    def text(self) -> str:
        """The line a person reads: ``source: message — fix``."""
        head = self.source.split(":", 1)[-1] if self.source.startswith("passthrough:") else self.source
        line = f"{head}: {self.message}" if head else self.message
        return f"{line} — {self.fix}" if self.fix else line

    def to_dict(self) -> dict:
        return asdict(self)


def from_error(source: str, level: str, exc: BaseException) -> Problem:
    """A Problem from an exception; a MirageError's message and fix are kept apart."""
    message = " ".join(str(getattr(exc, "message", None) or exc).split())[:300] or type(exc).__name__
    fix = " ".join(str(getattr(exc, "fix", None) or "").split())
    return Problem(source, level, message, fix)


class Problems:
    """The board: one entry per source, set and cleared by that source (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[str, Problem] = {}

    def set(self, problem: Problem) -> None:
        with self._lock:
            self._items[problem.source] = problem

    def clear(self, source: str) -> None:
        with self._lock:
            self._items.pop(source, None)

    def clear_prefix(self, prefix: str) -> None:
        with self._lock:
            for k in [k for k in self._items if k.startswith(prefix)]:
                del self._items[k]

    def get(self, source: str) -> Problem | None:
        with self._lock:
            return self._items.get(source)

    def all(self) -> list[Problem]:
        order = {lv: i for i, lv in enumerate(LEVELS)}
        with self._lock:
            return sorted(self._items.values(), key=lambda p: order[p.level])
