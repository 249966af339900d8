"""One clock for video and voice: audio is the master, video waits for it.

Every video packet carries its capture time (``time.perf_counter``, the clock the voice pipeline's
stream clocks map device frames onto). When a voice path runs (a converted voice or the lip-sync
microphone), :class:`AVSync` holds each processed frame until

    due = capture time + audio latency + trim

where the audio latency is the voice path's measured capture → virtual-microphone latency, fed in
continuously; the hold (latency + trim) is slew-limited here (at most ``SLEW_S``, 4 ms, per
frame), so a change — a larger voice block, a new trim — spreads over many frames instead of
freezing or bunching the video; a voice path that appears mid-stream is eased in from no hold.
``trim`` is the user's own offset for a conferencing app (positive: video later).

Rules (the product brief's):

- a frame that reaches the buffer more than ``LATE_S`` (150 ms) after its due time is behind the
  audio head and is dropped, counted ``dropped.av_late`` — except that the video never freezes:
  after ``MAX_LATE_RUN`` late frames in a row the next one is sent anyway (counted
  ``av.late_sent``; then the count starts again), and :attr:`behind` says so until a frame is
  on time again (the degrade ladder and the status read it);
- audio is never stretched or skipped;
- sustained drift — every one of the last ``DRIFT_FRAMES`` (120) frames sent more than
  ``DRIFT_TOLERANCE_S`` after its due time, because the output fell behind with frames piling up
  in the hold — is corrected by a soft video skip: while it lasts, of several frames due at once
  only the newest is sent (the others counted ``dropped.av_drift``).

Without a master (no voice path) a frame is due on arrival: the buffer adds nothing.

Metrics, per frame sent (:meth:`sent`): ``av.offset_ms`` (video capture → output latency minus
the voice path's latest measured latency; positive: the video is late; the trim shows in it),
``av.video_latency`` and, while a master runs, ``av.audio_latency``; per frame in, ``video.ready`` (capture → processed,
the video path's own latency, which the health verdict judges); gauge ``av.delay_ms``.
The clock is injectable, so the rules are tested on a scripted clock.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

LATE_S = 0.150
MAX_LATE_RUN = 15  # late frames in a row before one is sent anyway (never a frozen camera)
DRIFT_FRAMES = 120
DRIFT_TOLERANCE_S = 0.020
SLEW_S = 0.004  # largest change of the applied audio latency per frame (120 ms/s at 30 FPS)
READY_WINDOW = 60  # frames over which the video path's own latency is judged (lip-sync target)
MAX_HOLD = 120  # frames held at most (4 s at 30 FPS): a bound, never reached with sane latencies


class AVSync:
    """The timestamped video delay buffer. ``push`` and ``pop_due`` run on the output thread;
    ``set_audio_latency`` / ``set_trim`` may be called from any thread."""

    def __init__(self, metrics: Any = None, clock: Callable[[], float] = time.perf_counter,
                 late_s: float = LATE_S, drift_frames: int = DRIFT_FRAMES,
                 drift_tolerance_s: float = DRIFT_TOLERANCE_S, slew_s: float = SLEW_S):
        self.metrics = metrics
        self.clock = clock
        self.late_s, self.drift_frames, self.drift_tolerance_s, self.slew_s = \
            late_s, drift_frames, drift_tolerance_s, slew_s
        self._held: collections.deque = collections.deque()  # (due, packet), due ascending
        self._lock = threading.Lock()
        self._target: float | None = None  # the voice path's latest measured latency (s)
        self._applied: float | None = None  # what the hold uses now (slew-limited toward target)
        self.trim_s = 0.0
        self._late_run = 0  # frames dropped late in a row
        self._drift_run = 0  # frames sent late (beyond the tolerance) in a row
        self.behind_s = 0.0  # how late the last frame reached the buffer (0: on time or early)
        self._behind = False  # frames keep arriving later than the late limit
        self._pushed = 0
        self._ready: collections.deque[float] = collections.deque(maxlen=READY_WINDOW)

    # ---- inputs ----------------------------------------------------------------------------
    def set_audio_latency(self, seconds: float | None) -> None:
        """The master's current latency; None: no voice path (video leaves as it comes)."""
        with self._lock:
            self._target = None if seconds is None else max(0.0, float(seconds))
            if self._target is None:
                self._applied = None

    def set_trim(self, ms: float) -> None:
        self.trim_s = float(ms) / 1000.0  # reached at the slew rate too: no freeze, no burst

    @property
    def master(self) -> bool:
        return self._target is not None

    @property
    def delay_s(self) -> float:
        """The hold applied to the next frame: audio latency + trim, slew-limited (0 without a
        master)."""
        a = self._applied
        return 0.0 if a is None else a

    @property
    def behind(self) -> bool:
        """The video reaches the buffer more than the late limit after the audio (sustained)."""
        return self._behind

    @property
    def skipping(self) -> bool:
        return self._drift_run >= self.drift_frames

    def _step_applied(self) -> None:
        with self._lock:
            t = self._target
            if t is None:
                self._applied = None
                return
            want = max(0.0, t + self.trim_s)
            if self._applied is None:
                # at the start the hold is taken as it is; a voice path that appears mid-stream is
                # eased in from no hold, so the camera does not stop for a whole voice latency
                self._applied = want if self._pushed == 0 else 0.0
            d = want - self._applied
            self._applied += max(-self.slew_s, min(self.slew_s, d))

    def ready_latency_s(self, q: float = 90.0) -> float | None:
        """The video path's own capture → ready latency (the ``q``-th percentile of the last
        ``READY_WINDOW`` frames): what a lip-synced microphone must wait for. None before any."""
        vals = sorted(self._ready)
        if not vals:
            return None
        return vals[min(len(vals) - 1, int(round(q / 100.0 * (len(vals) - 1))))]

    # ---- the hold --------------------------------------------------------------------------
    def push(self, pkt: Any, now: float | None = None) -> bool:
        """Take a processed frame; False when it was dropped (behind the audio head)."""
        now = self.clock() if now is None else now
        ready = max(0.0, now - pkt.t_capture)
        self._ready.append(ready)
        if self.metrics is not None:
            self.metrics.record("video.ready", ready * 1000.0)  # the video path's own latency
        self._step_applied()
        self._pushed += 1
        due = pkt.t_capture + self.delay_s
        late = now - due
        self.behind_s = max(0.0, late)
        if self._applied is not None and late > self.late_s:
            self._late_run += 1
            if self._late_run < MAX_LATE_RUN:
                self._count("dropped.av_late")
                return False
            self._count("av.late_sent")  # the camera must not freeze: this one goes, late
            self._late_run = 0
            self._behind = True
        else:
            self._late_run = 0
            self._behind = False
        if len(self._held) >= MAX_HOLD:
            self._held.popleft()
            self._count("dropped.av_hold_full")
        self._held.append((due, pkt))
        return True

    def next_due(self) -> float | None:
        return self._held[0][0] if self._held else None

    def pop_due(self, now: float | None = None) -> list:
        """The frames due by ``now``, oldest first (only the newest while skipping)."""
        now = self.clock() if now is None else now
        out = []
        while self._held and self._held[0][0] <= now:
            out.append(self._held.popleft()[1])
        if len(out) > 1 and self.skipping:
            self._count("dropped.av_drift", len(out) - 1)
            out = out[-1:]
        return out

    def __len__(self) -> int:
        return len(self._held)

    def sent(self, pkt: Any, t_out: float) -> None:
        """Record one frame that left: its offset against the voice path's latest measured
        latency (not against the slew-limited hold, which would hide the catch-up and any error of
        the hold), and the drift bookkeeping."""
        video = t_out - pkt.t_capture
        m = self.metrics
        a, target = self._applied, self._target
        if m is not None:
            m.record("av.video_latency", video * 1000.0)
            m.set_gauge("av.delay_ms", round(self.delay_s * 1000.0, 1))
        if a is None or target is None:
            self._drift_run = 0
            return
        if m is not None:
            m.record("av.audio_latency", target * 1000.0)
            m.record("av.offset_ms", (video - target) * 1000.0)
        if t_out - (pkt.t_capture + a) > self.drift_tolerance_s:
            self._drift_run += 1
        else:
            self._drift_run = 0

    def _count(self, name: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.incr(name, n)
