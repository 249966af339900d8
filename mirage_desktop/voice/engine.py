"""The device-independent voice engine: 16 kHz chunks, silence gate, converter, SOLA, control.

Feed 16 kHz mono samples with :meth:`VoiceEngine.push`; while :meth:`ready`, :meth:`step`
returns one block of converted audio. Tests drive it directly; the pipeline drives it from a
worker thread between the device streams.

Real-time control (:class:`RealtimeController`), per chunk, ratio = processing time / block
duration, checked in this order:

- a chunk is *accepted* when ratio < 0.65 (``voice.accept_ratio`` = accepted / processed);
- **fallback**: 40 consecutive chunks > 0.80 → pass-through, with the reason in :meth:`status`
  (checked first: a converter that is steadily too slow stops at chunk 40, it is not first grown
  to the largest block);
- **grow**: the mean over the last 40 chunks > 0.75 and the block is below its maximum:
  block += 32 ms (however slow the mean: a bigger block amortises per-chunk overheads, and a
  converter that is only slow now and then never makes 40 consecutive slow chunks);
- **fallback (on average)**: the mean over the last 40 chunks > 0.80 and the block cannot grow
  (already at its maximum, or adaptation off) → pass-through, with the reason. Without it a
  converter slower than real time on average but with the odd fast chunk would drop input for
  ever;
- **shrink**: the mean over the last 120 chunks < 0.55 and the block is above its minimum:
  block -= 32 ms.

Block sizes: from :data:`MIN_BLOCK_MS` (32 ms, one step) to :data:`MAX_BLOCK_MS` (480 ms) in 32 ms
steps from the start block (:func:`controller_blocks_ms`). The pipeline starts at the smallest of
them whose timed conversions would all be accepted (ratio < 0.65; see ``VoicePipeline``).

After a resize the windows start afresh (the ratio at the new size is a new regime).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import numpy as np

from ..errors import MirageError
from ..metrics import Metrics
from . import SAMPLE_RATE
from .converters import PassThrough, check_converter
from .sola import SolaCrossfader

log = logging.getLogger(__name__)

ACCEPT_BELOW = 0.65
FALLBACK_ABOVE = 0.80
FALLBACK_COUNT = 40
GROW_ABOVE = 0.75
GROW_WINDOW = 40
SHRINK_BELOW = 0.55
SHRINK_WINDOW = 120
STEP_MS = 32
MIN_BLOCK_MS = 32.0  # smallest block the controller shrinks to (one step; the converter's context keeps
# its analysis window long: WORLD sees 96 ms of history, RVC its own, whatever the block)
MAX_BLOCK_MS = 480.0
# SOLA geometry (both add to the latency). 16 ms of equal-power crossfade is inaudible on speech;
# 8 ms of search covers one pitch period of output voices down to 125 Hz (lower voices still
# join without clicks, with a slightly less exact alignment). Was 40 ms + 10 ms.
CROSSFADE_MS = 16.0
SEARCH_MS = 8.0


class RealtimeController:
    """Pure decision logic; :meth:`update` takes a ratio and returns "grow", "shrink",
    "fallback" (the reason in :attr:`fallback_cause`) or None. Block sizes are in samples at
    16 kHz. See the module docstring for the rules and their order."""

    def __init__(self, block: int, min_block: int, max_block: int, step: int = STEP_MS * SAMPLE_RATE // 1000,
                 adapt: bool = True):
        self.block, self.min_block, self.max_block, self.step, self.adapt = block, min_block, max_block, step, adapt
        self.recent: collections.deque[float] = collections.deque(maxlen=SHRINK_WINDOW)
        self.consecutive_slow = 0
        self.processed = 0
        self.accepted = 0
        self.fallback_cause: str | None = None  # why the last "fallback" was returned

    def reset_windows(self) -> None:
        self.recent.clear()
        self.consecutive_slow = 0

    def update(self, ratio: float) -> str | None:
        self.processed += 1
        if ratio < ACCEPT_BELOW:
            self.accepted += 1
        self.recent.append(ratio)
        self.consecutive_slow = self.consecutive_slow + 1 if ratio > FALLBACK_ABOVE else 0
        if self.consecutive_slow >= FALLBACK_COUNT:
            self.fallback_cause = f"runtime/real > {FALLBACK_ABOVE} for {FALLBACK_COUNT} consecutive chunks"
            self.reset_windows()
            return "fallback"
        if len(self.recent) >= GROW_WINDOW:
            mean40 = float(np.mean(list(self.recent)[-GROW_WINDOW:]))
            can_grow = self.adapt and self.block < self.max_block
            if can_grow and mean40 > GROW_ABOVE:
                self.block = min(self.max_block, self.block + self.step)
                self.reset_windows()
                return "grow"
            if not can_grow and mean40 > FALLBACK_ABOVE:
                where = "at the largest block" if self.adapt else "(block adaptation off)"
                self.fallback_cause = (f"mean runtime/real {mean40:.2f} > {FALLBACK_ABOVE} over the last "
                                       f"{GROW_WINDOW} chunks {where}")
                self.reset_windows()
                return "fallback"
        if self.adapt and len(self.recent) >= SHRINK_WINDOW and float(np.mean(self.recent)) < SHRINK_BELOW \
                and self.block > self.min_block:
            self.block = max(self.min_block, self.block - self.step)
            self.reset_windows()
            return "shrink"
        return None

    @property
    def accept_ratio(self) -> float:
        return self.accepted / self.processed if self.processed else 1.0


def controller_blocks_ms(start_ms: float, min_ms: float = MIN_BLOCK_MS, max_ms: float = MAX_BLOCK_MS) -> list[float]:
    """The block sizes (ms) a controller started at ``start_ms`` can choose (the start, then 32 ms
    steps down to ``min_ms`` and up to ``max_ms``), as :class:`VoiceEngine` rounds them."""
    step = STEP_MS * SAMPLE_RATE // 1000
    start = int(round(start_ms * SAMPLE_RATE / 1000.0))
    lo, hi = int(min_ms * SAMPLE_RATE / 1000), max(start, int(max_ms * SAMPLE_RATE / 1000))
    sizes, b = {start}, start
    while b > lo:
        b = max(lo, b - step)
        sizes.add(b)
    b = start
    while b < hi:
        b = min(hi, b + step)
        sizes.add(b)
    return [_ms(b) for b in sorted(sizes)]


def _ms(samples: int) -> float:
    return samples * 1000.0 / SAMPLE_RATE


class VoiceEngine:
    def __init__(self, converter, metrics: Metrics | None = None, *, block_ms: float = 192.0,
                 crossfade_ms: float = CROSSFADE_MS, search_ms: float = SEARCH_MS, silence_db: float = -50.0,
                 min_block_ms: float = MIN_BLOCK_MS, max_block_ms: float = MAX_BLOCK_MS, adapt: bool = True,
                 fallback: bool = True, clock=time.perf_counter):
        self.metrics = metrics or Metrics()
        self.converter = check_converter(converter)
        self._passthrough = PassThrough()
        block = int(round(block_ms * SAMPLE_RATE / 1000.0))
        self.control = RealtimeController(block, int(min_block_ms * SAMPLE_RATE / 1000),
                                          max(block, int(max_block_ms * SAMPLE_RATE / 1000)), adapt=adapt)
        self.sola = SolaCrossfader(int(crossfade_ms * SAMPLE_RATE / 1000), int(search_ms * SAMPLE_RATE / 1000))
        self.silence_db = float(silence_db)
        self.clock = clock
        self.allow_fallback = fallback  # False only for benchmarks
        self._buf = np.zeros(0, dtype=np.float32)  # input history + pending
        self._pending = 0  # samples pushed but not yet consumed by a step
        self.consumed = 0  # input samples consumed by steps (16 kHz stream index)
        self.produced = 0  # output samples produced
        self.bypass = False  # user's choice (enabled = False)
        self.fallback_reason: str | None = None
        self.last_ratio = 0.0
        self.last_offset = 0
        self.last_silent = False  # the most recent chunk was below the silence gate
        self._lock = threading.Lock()

    # --- geometry ------------------------------------------------------------
    @property
    def block(self) -> int:
        return self.control.block

    @property
    def tail(self) -> int:
        return self.sola.need(self.block)

    def algorithmic_latency_ms(self) -> float:
        """Block (collecting) + crossfade + SOLA search: how far output lags input inside the engine."""
        return _ms(self.block + self.sola.crossfade + self.sola.search)

    def source_offset(self) -> int:
        """Input index (16 kHz) that the first sample of the most recent output block came from."""
        return self.consumed - self.tail + self.last_offset

    # --- feeding -----------------------------------------------------------
    def push(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        with self._lock:
            self._buf = np.concatenate([self._buf, x])
            self._pending += x.size
            keep = self._keep() + self._pending
            if self._buf.size > keep:
                self._buf = self._buf[-keep:]

    def _keep(self) -> int:
        return max(self.converter.context, self._passthrough.context) + self.control.max_block \
            + self.sola.crossfade + self.sola.search

    def pending(self) -> int:
        return self._pending

    def ready(self) -> bool:
        return self._pending >= self.block

    def drop_backlog(self, keep_blocks: int = 1) -> int:
        """Drop the oldest unprocessed input beyond ``keep_blocks`` blocks (latency beats completeness)."""
        with self._lock:
            extra = self._pending - keep_blocks * self.block
            if extra <= 0:
                return 0
            self._pending -= extra
            self.consumed += extra  # those samples are skipped
        self.metrics.incr("voice.dropped_input_samples", extra)
        return extra

    # --- control -----------------------------------------------------------
    def set_converter(self, converter) -> None:
        self.converter = check_converter(converter)
        self.fallback_reason = None
        self.control.reset_windows()

    def clear_fallback(self) -> None:
        self.fallback_reason = None
        self.control.reset_windows()

    @property
    def active_converter(self) -> str:
        if self.bypass or self.fallback_reason:
            return "passthrough"
        return self.converter.name

    # --- processing ----------------------------------------------------------
    def step(self) -> np.ndarray:
        if not self.ready():
            raise MirageError("voice engine stepped without a full block", "call ready() first")
        m = self.metrics
        t0 = self.clock()
        block = self.block
        tail = self.tail
        with self._lock:
            end = self._buf.size - (self._pending - block)
            conv = self.converter
            ctx = conv.context
            start = max(0, end - (ctx + tail))
            window = self._buf[start:end]
            self._pending -= block
            self.consumed += block
        if window.size < ctx + tail:  # start of stream: pad with silence in front
            window = np.concatenate([np.zeros(ctx + tail - window.size, dtype=np.float32), window])
        timings: dict[str, float] = {}
        rms = float(np.sqrt(np.mean(np.square(window[-tail:], dtype=np.float64)) + 1e-20))
        level_db = 20.0 * np.log10(rms)
        silent = level_db < self.silence_db
        self.last_silent = bool(silent)
        use_converter = not (self.bypass or self.fallback_reason or silent)
        if use_converter:
            try:
                converted = conv.convert(window, tail, timings)
                if converted.shape[0] != tail or not np.all(np.isfinite(converted)):
                    raise MirageError(f"converter {conv.name} returned bad audio", "check the model")
            except Exception as exc:  # a raising converter must not stop the stream
                self.fallback_reason = f"converter {conv.name} failed: {' '.join(str(exc).split())}"
                log.warning("voice: %s; passing the voice through", self.fallback_reason)
                m.incr("voice.converter_errors")
                converted = window[-tail:]
                use_converter = False
        else:
            converted = window[-tail:]
            if silent:
                m.incr("voice.silent_chunks")
            else:
                m.incr("voice.passthrough_chunks")
        t_post = self.clock()
        out = self.sola.process(np.asarray(converted, dtype=np.float32), block)
        out = np.clip(out, -1.0, 1.0)
        self.last_offset = self.sola.last_offset
        timings["post"] = timings.get("post", 0.0) + (self.clock() - t_post) * 1000.0
        self.produced += out.size
        elapsed = self.clock() - t0
        for stage in ("encode", "f0", "convert", "post"):
            if stage in timings:
                m.record(f"voice.{stage}", timings[stage])
        m.record("voice.chunk", elapsed * 1000.0)
        m.incr("voice.chunks")
        ratio = elapsed / (block / SAMPLE_RATE)
        self.last_ratio = ratio
        m.set_gauge("voice.rtf", ratio)
        if use_converter:  # only converter work is judged by the real-time control
            action = self.control.update(ratio)
            if ratio < ACCEPT_BELOW:
                m.incr("voice.accepted")
            m.set_gauge("voice.accept_ratio", self.control.accept_ratio)
            if action == "fallback" and self.allow_fallback:
                self.fallback_reason = (f"converter {conv.name} too slow: {self.control.fallback_cause} "
                                        f"at {_ms(block):.0f} ms")
                log.warning("voice: %s; passing the voice through", self.fallback_reason)
                m.incr("voice.fallbacks")
            elif action in ("grow", "shrink"):
                log.info("voice: block %s to %.0f ms (runtime/real %.2f)", action, _ms(self.block), ratio)
                m.incr(f"voice.block_{action}")
        m.set_gauge("voice.block_ms", _ms(self.block))
        m.set_gauge("voice.level_db", level_db)
        return out

    def process(self, x: np.ndarray, flush: bool = True) -> np.ndarray:
        """Offline helper: run a whole signal through in blocks; returns the concatenated output."""
        outs = []
        self.push(x)
        while self.ready():
            outs.append(self.step())
        if flush:
            pad = self.tail + self.block
            self.push(np.zeros(pad, dtype=np.float32))
            while self.ready():
                outs.append(self.step())
        return np.concatenate(outs) if outs else np.zeros(0, dtype=np.float32)

    def status(self) -> dict[str, Any]:
        return {
            "converter": self.active_converter,
            "configured_converter": self.converter.name,
            "bypass": self.bypass,
            "passthrough_reason": ("bypass (voice disabled)" if self.bypass else self.fallback_reason),
            "block_ms": _ms(self.block),
            "crossfade_ms": _ms(self.sola.crossfade),
            "search_ms": _ms(self.sola.search),
            "algorithmic_latency_ms": self.algorithmic_latency_ms(),
            "rtf": self.last_ratio,
            "accept_ratio": self.control.accept_ratio,
            "options": self.converter.options(),
        }
