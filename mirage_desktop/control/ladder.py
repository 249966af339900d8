"""The degrade ladder: keep the frame rate under load by giving up quality, then frames, then pixels.

A controller reads the video **load ratio** — the worker's time per frame over the frame budget at
the current target frame rate — once per processed frame and moves along a ladder of steps, in the
product brief's order:

1. quality: the swapper's pixel boost one size down at a time (512 → 384 → 256 → 128 px: 16, 9, 4,
   then 1 model call a face); the enhancer every 2nd, then every 4th frame, then off; detection
   size 640 → 480 → 320;
2. frame rate: toward 15 FPS (24, 20, 15 from 30);
3. processing resolution: 512 → 384 → 256 on the short side (the frame is scaled down for the
   stages and back up, so the virtual camera keeps its size).

Steps that do not apply to the user's settings (no pixel boost, no enhancer, a detection size
already small, a camera already at 15 FPS or a frame already small) are left out of the ladder,
which is rebuilt when those settings change.

Rules:

- **step down** when the mean ratio over the last ``DOWN_WINDOW`` frames is above 1.0 (or the video
  is behind the voice by more than the A/V late limit, which counts as over budget); then the
  windows start afresh (the ratio at the new level is a new regime);
- **restore** one step (in reverse order) after ``RESTORE_FRAMES`` (300) stable frames in a row —
  frames at which the mean ratio over the last ``DOWN_WINDOW`` frames is below 0.60, so that one
  slow frame on a busy machine does not start the count again — and only if the level above is
  expected to fit: today's ratio divided by what the step saved when it was taken (at most half,
  or for a pixel-boost step its drop in model calls, 9 → 4 say: a larger saving means the load fell
  while it was being measured) must be below
  ``RESTORE_FIT`` (0.85).
  Without that a ratio of 0.59 here that means 1.1 up there would bounce up and down for ever;
- a restore that has to be undone within ``RESTORE_FRAMES`` frames doubles the stable run the next
  restore of that step needs (a second guard against oscillation when the load itself wobbles).

Pure logic, no clock: tests drive it with scripted ratios. :meth:`overrides` is what the pipeline
applies on top of the user's settings (never written back into them: pinning the settings, i.e.
turning adaptation off, returns to exactly what the user chose).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

DOWN_ABOVE = 1.0
DOWN_WINDOW = 30
RESTORE_BELOW = 0.60
RESTORE_FRAMES = 300
RESTORE_FIT = 0.85
MAX_SAVING = 0.5  # the most one step is taken to save: a ratio at most halved
FPS_STEPS = (24.0, 20.0, 15.0)
SHORT_SIDES = (512, 384, 256)
DET_SIZES = (480, 320)
PIXEL_BOOSTS = (384, 256, 128)  # the swapped crop's size, one step down at a time


@dataclass(frozen=True)
class Step:
    kind: str  # "boost" | "enhancer" | "det_size" | "fps" | "scale"
    value: Any  # boost: pixel boost in px; enhancer: interval factor (2, 4) or 0 (off); det_size; fps;
    # scale: short side in px
    reason: str  # what the status says while this step is active
    # the lowest share of a frame's cost this step can leave (what it saved is never taken to be
    # more): half for most steps; a pixel-boost step can cut the swap to (b/prev)² of its cost
    floor: float = MAX_SAVING

    def __str__(self) -> str:
        return self.reason


def build_steps(enhancer_on: bool, det_size: int, fps: float, short_side: int,
                pixel_boost: int = 128) -> list[Step]:
    """The ladder for these settings, top (lightest reduction) first. The pixel boost goes first:
    it is the dearest quality setting (n·n swapper calls a face) and the one a viewer misses
    least, since the face is still swapped, only less sharp."""
    keep = f"to keep {fps:.0f} FPS"
    steps: list[Step] = []
    prev = pixel_boost
    for b in PIXEL_BOOSTS:
        if b < pixel_boost:
            steps.append(Step("boost", b, f"pixel boost reduced to {b} px {keep}", floor=(b / prev) ** 2))
            prev = b
    if enhancer_on:
        steps += [Step("enhancer", 2, f"face enhancer on every 2nd frame {keep}"),
                  Step("enhancer", 4, f"face enhancer on every 4th frame {keep}"),
                  Step("enhancer", 0, f"face enhancer off {keep}")]
    for d in DET_SIZES:
        if d < det_size:
            steps.append(Step("det_size", d, f"reduced detection size to {d} {keep}"))
    for f in FPS_STEPS:
        if f < fps:
            steps.append(Step("fps", f, f"frame rate reduced to {f:.0f} FPS to keep up"))
    for s in SHORT_SIDES:
        if s < short_side:
            steps.append(Step("scale", s, f"processing at {s} px (short side) to keep up"))
    return steps


class DegradeLadder:
    """Which steps of :func:`build_steps` are active: the first ``level`` of them."""

    def __init__(self, steps: list[Step], enabled: bool = True):
        self.steps = list(steps)
        self.enabled = enabled
        self.level = 0
        self.recent: collections.deque[float] = collections.deque(maxlen=DOWN_WINDOW)
        self.stable = 0
        self.since_change = 0
        self.left_at: dict[int, float] = {}  # level -> mean ratio when we stepped down from it
        self.entered_at: dict[int, float] = {}  # level -> mean ratio just after stepping down to it
        self.need: dict[int, int] = {}  # level -> stable frames a restore to it needs
        self._restored_to: int | None = None
        self.log: list[tuple[str, int, str]] = []  # ("down"|"up", new level, reason)

    def rebuild(self, steps: list[Step]) -> None:
        """New settings or models. The same ladder as before keeps its place; another one (the user
        chose a new detection size, say) starts from the top: nothing is reduced any more."""
        if list(steps) != self.steps:
            self.__init__(steps, self.enabled)

    def set_enabled(self, on: bool) -> None:
        if not on:
            self.level = 0
        self.enabled = bool(on)
        self._fresh()

    @property
    def active(self) -> list[Step]:
        return self.steps[:self.level]

    def reason(self) -> str | None:
        return self.steps[self.level - 1].reason if self.level else None

    def overrides(self) -> dict[str, Any]:
        """kind -> value of the deepest active step of each kind."""
        out: dict[str, Any] = {}
        for st in self.active:
            out[st.kind] = st.value
        return out

    def _fresh(self) -> None:
        self.recent.clear()
        self.stable = 0
        self.since_change = 0

    def update(self, ratio: float, behind: bool = False) -> str | None:
        """One processed frame's load ratio. Returns "down", "up" or None."""
        if not self.enabled:
            return None
        if behind:
            ratio = max(ratio, DOWN_ABOVE + 1e-6)
        self.recent.append(ratio)
        self.since_change += 1
        mean = sum(self.recent) / len(self.recent)
        # a stable frame: the recent mean is below the restore line (one slow frame on a busy
        # machine does not start the count again; a sustained rise does)
        self.stable = self.stable + 1 if mean < RESTORE_BELOW else 0
        if self.level in self.entered_at and self.entered_at[self.level] < 0 and len(self.recent) == self.recent.maxlen:
            self.entered_at[self.level] = mean  # the first full window at a new level
        if len(self.recent) == self.recent.maxlen and mean > DOWN_ABOVE and self.level < len(self.steps):
            if self._restored_to == self.level and self.since_change < RESTORE_FRAMES:
                self.need[self.level] = self.need.get(self.level, RESTORE_FRAMES) * 2  # bounced: wait longer
            self.left_at[self.level] = mean
            self.level += 1
            self.entered_at[self.level] = -1.0  # measured once a full window is in
            self._restored_to = None
            self.log.append(("down", self.level, self.steps[self.level - 1].reason))
            self._fresh()
            return "down"
        if self.level and self.stable >= self.need.get(self.level - 1, RESTORE_FRAMES):
            up = self.level - 1
            here = self.entered_at.get(self.level, -1.0)
            there = self.left_at.get(up)
            floor = min(MAX_SAVING, self.steps[up].floor)
            if there is not None and there > 0 and here > 0:
                # what the step saved, measured when it was taken: no step saves more than half of
                # a frame's cost (a frame-rate step 17-25 %, a size step at most half; a pixel-boost
                # step at most its drop in model calls), so a larger saving means the load itself
                # fell while it was measured; then that most is assumed
                saved = min(1.0, max(floor, here / there))
                expected = mean / saved  # the level above, at today's load
                if expected >= RESTORE_FIT:
                    self.stable = 0  # would not fit: look again after another stable run
                    return None
            reason = self.steps[self.level - 1].reason
            self.level = up
            self._restored_to = up
            self.log.append(("up", self.level, f"restored: {reason}"))
            self._fresh()
            return "up"
        return None


class FrameRateCap:
    """Admits frames at no more than ``fps`` on average (the ladder's frame-rate steps): a frame is
    taken when its capture time has reached the next slot; slots advance by 1/fps and catch up by
    at most half a slot behind, so 24 of 30 camera frames pass at 24 FPS (not every other one)."""

    def __init__(self, fps: float = 0.0):
        self.fps = float(fps)
        self._next = -1e18

    def set(self, fps: float) -> None:
        if float(fps) != self.fps:
            self.fps = float(fps)
            self._next = -1e18

    def admit(self, t: float) -> bool:
        if not self.fps:
            return True
        if t + 1e-6 < self._next:
            return False
        period = 1.0 / self.fps
        self._next = max(self._next + period, t - 0.5 * period)
        return True
