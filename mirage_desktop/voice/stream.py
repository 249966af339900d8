"""Voice conversion without sound devices: samples in, converted samples out (``mirage serve``).

:class:`VoicePipeline` sits between two PortAudio streams; :class:`VoiceStream` is the same work
for a stream that arrives and leaves as data — a WebRTC session's microphone track in, its
outgoing audio track out — with the same parts: :class:`~.resample.StreamResampler` (the
stream's rate <-> 16 kHz), :class:`~.engine.VoiceEngine` (silence gate, the converter, SOLA, the
real-time controller and its fall-back to pass-through) and the converters of
:mod:`.converters`.

    s = VoiceStream(converter, metrics, name="session-id")
    s.start()                      # the worker thread: picks the start block, then converts
    s.push(samples, t_arrival)     # any thread: mono float32 at ``sr_in``, arrival time (perf_counter)
    y = s.read(960, t_handover)    # any thread (the outgoing track): ``sr_out`` samples, zeros where none
    s.latency_s()                  # arrival -> hand-over of the converted voice, measured
    s.stop()

Threads: ``push`` only queues (a bounded queue: beyond :data:`MAX_QUEUED_S` of input the oldest
chunk is dropped and counted); one worker thread per stream resamples, converts and writes the
output FIFO; ``read`` takes from the FIFO. Nothing here blocks the caller of ``push`` or
``read`` for longer than a lock held for a copy.

Block size: as the desktop's automatic choice (``voice_block_ms`` 0): the smallest block the
controller can choose (32, 64, ... 480 ms) whose timed conversions of a voiced window (after one
untimed warm-up) all come in under the accept ratio 0.65 (:func:`pick_start_block`); then the
controller grows and shrinks it by its rules. Probing runs on the worker thread.

Two paths, chosen per input chunk:

- **converting** (``enabled`` and no fall-back reason): 48 kHz -> 16 kHz -> the engine -> 48 kHz;
- **direct** (voice off, or the converter failed or could not keep up): the input samples go to
  the output as they are, at full bandwidth (no resampling), a few ms behind. A switch between the
  two starts the converting path afresh; the ~50 ms held inside the engine at a switch to direct
  are not played.

A converter that raises or is too slow (the engine's rules) makes the stream pass the voice
through with the reason in :meth:`status` (``passthrough_reason``) and ``on_change`` is called;
a later option change (pitch, formant, preset) or ``set_enabled(True)`` tries the converter again.

Output timing (a simpler form of the pipeline's): a block that finds the FIFO empty is preceded
by silence worth the longest recent conversion time plus a jitter margin (10 ms, +10 ms per
underrun up to 120 ms, -5 ms after 10 s without one); output beyond max(block, 200 ms) + 2 x
that allowance + 50 ms (a stalled reader) is dropped and counted.

Latency: each written block is tagged with the arrival time of the input sample it came from
(an input clock over the arrival times: :class:`~.pipeline.StreamClock`, the earliest arrival of
the recent past taken as on time) and its FIFO position; when ``read`` hands that position over
at ``t_handover`` (+ its offset in the block / ``sr_out``), the difference is one measured
latency (``voice.latency_e2e``). :meth:`latency_s` is the median of the last 5, like
``VoicePipeline.latency_s``; before 3 are measured since the last path switch, the estimate
(block + crossfade + search + resamplers + allowance + one read block).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from ..errors import MirageError
from ..metrics import Metrics
from . import SAMPLE_RATE
from .pipeline import (FALLBACK_START_MS, LATENCY_MIN_MARKERS, LATENCY_WINDOW, MARGIN_DECAY_AFTER_S, MARGIN_DECAY_S,
                       MARGIN_MAX_S, MARGIN_START_S, MARGIN_STEP_S, PROC_WINDOW, START_PROBE_BUDGET_S,
                       START_PROBE_RUNS, SampleFifo, StreamClock, VoicePipeline, median_s)

log = logging.getLogger(__name__)

MAX_QUEUED_S = 2.0  # input waiting for the worker beyond this: the oldest chunk is dropped
DROP_FLOOR_S = 0.2
SLACK_WINDOW = 16  # writes over which unneeded FIFO room is judged (cut in silence only)
SLACK_TOLERANCE_S = 0.010
READ_BLOCK_S = 0.020  # what the estimate allows for the reader's granularity (20 ms WebRTC frames)
STREAM_OPTIONS = ("pitch", "formant", "preset", "f0_method", "speaker")


def shared_copy(conv):
    """A converter for one more stream on the same loaded model (RVC: the ONNX sessions are shared,
    thread-safe; the options, the lock and the noise generator are the copy's own)."""
    import copy

    c = copy.copy(conv)
    if hasattr(c, "_lock"):
        c._lock = threading.Lock()
    if hasattr(c, "_rng"):
        c._rng = np.random.default_rng(0)
    return c


def pick_start_block(conv, crossfade_ms: float, search_ms: float, block_ms: float = 0.0) -> tuple[float, float, dict]:
    """(start block ms, first processing-time estimate s, probe {block ms: worst ratio}): the
    desktop's automatic rule (``VoicePipeline._start_block``), without a pipeline. ``block_ms`` > 0
    is taken as given; the pass-through converter starts at 20 ms."""
    from .engine import ACCEPT_BELOW, MIN_BLOCK_MS, controller_blocks_ms

    timed = VoicePipeline._time_conversions
    if block_ms > 0:
        return block_ms, timed(conv, block_ms, crossfade_ms, search_ms, 1), {}
    if conv.name == "passthrough":
        return 20.0, 0.0, {}
    probe: dict[float, float] = {}
    timed(conv, MIN_BLOCK_MS, crossfade_ms, search_ms, 1)  # warm-up, untimed
    t0 = time.perf_counter()
    for b in controller_blocks_ms(MIN_BLOCK_MS):
        worst = timed(conv, b, crossfade_ms, search_ms, START_PROBE_RUNS)
        probe[b] = worst / (b / 1000.0)
        if probe[b] < ACCEPT_BELOW:
            return b, worst, probe
        if time.perf_counter() - t0 > START_PROBE_BUDGET_S:
            break
    return FALLBACK_START_MS, 0.0, probe


class VoiceStream:
    """One stream's voice conversion on its own worker thread (see the module docstring)."""

    def __init__(self, converter, metrics: Metrics | None = None, *, name: str = "voice", sr_in: int = 48000,
                 sr_out: int = 48000, enabled: bool = True, block_ms: float = 0.0, silence_db: float = -50.0,
                 adapt: bool = True, on_change: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        from .converters import check_converter

        # a converter, or a function that builds one (called on the worker: a model may take a while)
        self._factory = None if hasattr(converter, "convert") else converter
        self.converter = check_converter(converter) if self._factory is None else None
        self._pending_options: dict[str, Any] = {}
        self._opt_lock = threading.Lock()
        self.metrics = metrics or Metrics()
        self.name = name
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        self.enabled = bool(enabled)
        self.block_ms, self.silence_db, self.adapt = float(block_ms), float(silence_db), bool(adapt)
        self.on_change = on_change
        self.clock = clock  # what the engine's real-time control times conversions with (tests script it)
        self.engine = None  # VoiceEngine, built by the worker (after the start-block probe)
        self.start_probe: dict[float, float] = {}
        self.error: str | None = None
        self._in: collections.deque = collections.deque()  # (samples, arrival time) for the worker
        self._queued = 0  # input samples waiting in _in
        self._skipped = 0  # input samples dropped from _in, not yet counted by the worker
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fifo = SampleFifo()
        self._markers: collections.deque = collections.deque(maxlen=256)  # (FIFO index, capture time)
        self._marker_lock = threading.Lock()
        self._recent: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)  # ms
        self._proc: collections.deque = collections.deque(maxlen=PROC_WINDOW)
        self._proc_guess = 0.0
        self._margin_s = MARGIN_START_S
        self._since_underrun = 0.0
        self._playing = False
        self._levels: collections.deque = collections.deque(maxlen=SLACK_WINDOW)  # FIFO level before each write
        self._in_frames = 0
        self._in_clock = StreamClock(self.sr_in)
        self._path: str | None = None  # "convert" | "direct": the path the last chunk took
        self._seg_origin = 0  # input frame where the current converting segment began
        self._rs_in = self._rs_out = None
        self._reported: tuple | None = None  # (converting, reason) last told to on_change
        self.ready = threading.Event()  # the worker has built its engine (probe done)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._work, name=f"mirage-voice:{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- input / output (any thread) -----------------------------------------------------------
    def push(self, x: np.ndarray, t: float | None = None) -> None:
        """Mono samples at ``sr_in`` that arrived at ``t`` (perf_counter; now when None)."""
        t = time.perf_counter() if t is None else float(t)
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if not x.size:
            return
        with self._cond:
            self._in.append((x, t))
            self._queued += x.size
            while self._queued > MAX_QUEUED_S * self.sr_in and len(self._in) > 1:
                # the worker is not keeping up at all: latency beats completeness (the oldest goes;
                # the input clock still counts its samples)
                old, _ = self._in.popleft()
                self._queued -= old.size
                self._skipped += old.size
                self.metrics.incr("voice.dropped_input_samples", old.size)
            self._cond.notify()

    def _next(self) -> tuple | None:
        """The oldest queued chunk (and the samples dropped before it), or None after 0.1 s."""
        with self._cond:
            if not self._in and not self._stop.is_set():
                self._cond.wait(0.1)
            if not self._in:
                return None
            x, t = self._in.popleft()
            self._queued -= x.size
            skipped, self._skipped = self._skipped, 0
        return x, t, skipped

    def read(self, n: int, t: float) -> np.ndarray:
        """``n`` samples at ``sr_out`` handed over at ``t`` (perf_counter): the FIFO's, then zeros.
        Records the measured latency of every tagged sample in them."""
        out = np.zeros(n, dtype=np.float32)
        r_a, got = self._fifo.read_into_at(out)
        if got < n:
            if self._playing and got < n:  # ran dry while playing: later blocks get more room
                self.metrics.incr("voice.underruns")
                self._margin_s = min(MARGIN_MAX_S, self._margin_s + MARGIN_STEP_S)
                self._since_underrun = 0.0
            self._playing = got > 0
        else:
            self._playing = True
        if got:
            r_b = r_a + got
            with self._marker_lock:
                while self._markers and self._markers[0][0] < r_b:
                    w0, t_cap = self._markers.popleft()
                    if w0 >= r_a:
                        ms = (t + (w0 - r_a) / self.sr_out - t_cap) * 1000.0
                        self.metrics.record("voice.latency_e2e", ms)
                        self._recent.append(ms)
        return out

    # ---- control (any thread) ------------------------------------------------------------------
    def set_enabled(self, on: bool) -> None:
        """Convert (True) or pass the voice through as it came (False); from the next chunk."""
        self.enabled = bool(on)
        eng = self.engine
        if on and eng is not None:
            eng.clear_fallback()  # the user asks again: the converter gets another chance
        self._notify()

    def set_option(self, name: str, value: Any) -> None:
        """pitch, formant, preset, f0_method, speaker — checked first (MirageError), then applied
        live; clears a fall-back (the converter is tried again)."""
        from .converters import check_option

        if name not in STREAM_OPTIONS:
            raise MirageError(f"unknown voice option {name!r}", f"use {', '.join(STREAM_OPTIONS)}")
        check_option(name, value)
        with self._opt_lock:
            if self.converter is None:  # not built yet: applied when it is
                self._pending_options[name] = value
            else:
                self.converter.set_option(name, value)
        eng = self.engine
        if eng is not None:
            eng.clear_fallback()
        self._notify()

    @property
    def converting(self) -> bool:
        """The voice is being converted now (enabled, the engine built, no fall-back)."""
        eng = self.engine
        return self.enabled and eng is not None and eng.fallback_reason is None and self.error is None

    @property
    def passthrough_reason(self) -> str | None:
        eng = self.engine
        if not self.enabled:
            return "voice conversion off"
        if self.error:
            return self.error
        return eng.fallback_reason if eng is not None else None

    def latency_s(self) -> float | None:
        """Arrival -> hand-over latency (s) of the path in use: the median of the last 5
        measured, or the estimate before 3 are. None when the stream is not running."""
        if not self.running:
            return None
        with self._marker_lock:  # appended by the reader's thread
            recent = sorted(self._recent)
        if len(recent) < LATENCY_MIN_MARKERS:
            return self.estimated_latency_s()
        return median_s(recent)

    def master_latency_s(self) -> float | None:
        """What the video waits for (A/V sync): the latency while the voice is converted, None
        otherwise (voice off or passed through: no hold)."""
        return self.latency_s() if self.converting else None

    def estimated_latency_s(self) -> float | None:
        eng = self.engine
        allow = self._proc_ref() + self._margin_s
        if not self.converting or eng is None:
            return allow + READ_BLOCK_S
        rs = (self._rs_in.delay_s if self._rs_in else 0.0) + (self._rs_out.delay_s if self._rs_out else 0.0)
        return eng.algorithmic_latency_ms() / 1000.0 + rs + allow + READ_BLOCK_S

    def _proc_ref(self) -> float:
        with self._marker_lock:  # appended by the worker, read by the video's output thread
            return max(self._proc) if self._proc else self._proc_guess

    def status(self) -> dict:
        m = self.metrics
        eng = self.engine
        lat = m.histogram("voice.latency_e2e").summary()
        conv = m.histogram("voice.converter_ms").summary()
        cur = self.latency_s()
        return {
            "enabled": self.enabled, "converting": self.converting,
            "converter": "passthrough" if not self.converting else self.converter.name,
            "configured_converter": None if self.converter is None else self.converter.name,
            "passthrough_reason": self.passthrough_reason, "ready": self.ready.is_set(),
            "block_ms": None if eng is None else round(eng.block * 1000.0 / SAMPLE_RATE, 1),
            "latency_ms": None if cur is None else round(cur * 1000.0, 1),
            "measured_latency_p50_ms": lat["p50"], "measured_latency_p95_ms": lat["p95"],
            "converter_p50_ms": conv["p50"], "converter_p95_ms": conv["p95"],
            "rtf": None if eng is None else round(eng.last_ratio, 3),
            "underruns": m.counter("voice.underruns"), "chunks": m.counter("voice.chunks"),
            "dropped_input_samples": m.counter("voice.dropped_input_samples"),
            "options": {} if self.converter is None else self.converter.options(), "error": self.error,
        }

    def _notify(self) -> None:
        key = (self.converting, self.passthrough_reason)
        if key == self._reported or self.on_change is None:
            return
        self._reported = key
        try:
            self.on_change(self.status())
        except Exception as exc:  # a listener's failure is not the stream's
            log.debug("voice stream %s: on_change failed: %s", self.name, exc)

    # ---- worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        from .converters import check_converter
        from .engine import CROSSFADE_MS, SEARCH_MS, VoiceEngine

        what = "voice stream failed"
        try:
            if self._factory is not None:
                what = "the voice converter could not be loaded"
                conv = check_converter(self._factory())
                with self._opt_lock:
                    for name, value in self._pending_options.items():
                        conv.set_option(name, value)
                    self._pending_options.clear()
                    self.converter = conv
                what = "voice stream failed"
            block_ms, self._proc_guess, self.start_probe = pick_start_block(
                self.converter, CROSSFADE_MS, SEARCH_MS, self.block_ms)
            self.engine = VoiceEngine(self.converter, self.metrics, block_ms=block_ms, silence_db=self.silence_db,
                                      adapt=self.adapt, clock=self.clock)
            self.metrics.set_gauge("voice.block_ms", block_ms)
            self.ready.set()
            self._notify()
            while not self._stop.is_set():
                got = self._next()
                if got is not None:
                    self._chunk(*got)
        except Exception as exc:  # never take the session down: pass the voice through, say why
            self.error = f"{what}: {' '.join(str(exc).split())[:200]}"
            log.warning("voice stream %s: %s", self.name, self.error, exc_info=what == "voice stream failed")
            self.ready.set()
            self._notify()
            while not self._stop.is_set():  # the voice as it came from now on
                got = self._next()
                if got is not None:
                    x, t, skipped = got
                    self._in_frames += skipped + x.size
                    self._in_clock.update(t, self._in_frames)
                    self._write(x, self._in_frames - x.size, 0.0, self._margin_s)

    def _chunk(self, x: np.ndarray, t: float, skipped: int = 0) -> None:
        self._in_frames += skipped + x.size
        self._in_clock.update(t, self._in_frames)
        path = "convert" if self.converting else "direct"
        if path != self._path:
            self._switch(path, self._in_frames - x.size)
        if path == "direct":
            quiet = 20.0 * np.log10(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-10) < self.silence_db
            self._write(x, self._in_frames - x.size, 0.0, self._margin_s, silent=quiet)
        else:
            self._convert(x)
        self.metrics.incr("voice.in_chunks")
        self._notify()

    def _switch(self, path: str, first_frame: int) -> None:
        from .engine import VoiceEngine
        from .resample import StreamResampler

        if path == "convert":  # afresh: the engine, both resamplers, from this chunk on
            old = self.engine
            self.engine = VoiceEngine(self.converter, self.metrics, block_ms=old.block * 1000.0 / SAMPLE_RATE,
                                      silence_db=self.silence_db, adapt=self.adapt, clock=self.clock)
            self._rs_in = StreamResampler(self.sr_in, SAMPLE_RATE)
            self._rs_out = StreamResampler(SAMPLE_RATE, self.sr_out)
            self._seg_origin = first_frame  # input frame of the segment's 16 kHz sample 0
        elif self._path == "convert":  # converted audio still queued would hold the direct voice back
            self.metrics.incr("voice.dropped_output_samples", self._fifo.drop(self._fifo.level))
            self._levels.clear()
        self._path = path
        with self._marker_lock:
            self._recent.clear()  # the other path's latencies say nothing about this one
        self.metrics.incr(f"voice.switch_{path}")
        log.info("voice stream %s: %s", self.name, "converting" if path == "convert" else
                 f"passing through ({self.passthrough_reason})")

    def _convert(self, x: np.ndarray) -> None:
        eng, m = self.engine, self.metrics
        eng.push(self._rs_in.process(x))
        if eng.pending() > 2 * eng.block:  # the worker fell behind: latency beats completeness
            eng.drop_backlog(keep_blocks=1)
        ratio = self.sr_out / SAMPLE_RATE
        while eng.ready():
            t_ready = time.perf_counter()
            out16 = eng.step()
            proc = time.perf_counter() - t_ready
            used = not eng.last_silent and eng.active_converter != "passthrough"
            if used:
                with self._marker_lock:
                    self._proc.append(proc)
                m.record("voice.converter_ms", proc * 1000.0)
            start16 = eng.produced - out16.size
            y = self._rs_out.process(out16)
            pos = int(round(start16 * ratio)) - (self._rs_out.n_out - y.size)
            src = None
            if pos >= 0:  # input frame the block's first output sample came from
                src = self._seg_origin + eng.source_offset() * self.sr_in / SAMPLE_RATE
            self._write(y, src, proc, self._proc_ref() + self._margin_s, pos=max(0, pos), silent=eng.last_silent)
            if eng.fallback_reason is not None:
                self._notify()
                break  # the rest of this chunk goes the direct way from the next chunk

    def _write(self, y: np.ndarray, src_frame: float | None, proc: float, allow: float, pos: int = 0,
               silent: bool = False) -> None:
        fifo, m, sr = self._fifo, self.metrics, self.sr_out
        pad = max(0, int((allow - proc) * sr))  # an empty FIFO: later blocks may take ``allow`` longer
        level = fifo.level
        if silent and level and len(self._levels) == SLACK_WINDOW:
            # room that has not been needed for a while is cut from a silent block's start (never
            # from voiced audio), so the latency comes back down after a stall or an underrun
            excess = min(self._levels) - int(allow * sr)
            if excess > SLACK_TOLERANCE_S * sr:
                cut = min(excess, y.size - pos)
                y = np.concatenate([y[:pos], y[pos + cut:]])
                self._levels = collections.deque((v - cut for v in self._levels), maxlen=SLACK_WINDOW)
                m.incr("voice.trimmed_output_samples", cut)
                src_frame = None  # its first sample is gone: no latency marker for it
        self._levels.append(level) if level else self._levels.clear()
        at, before, _ = fifo.write(y, pad_if_empty=pad)
        if src_frame is not None:
            t_cap = self._in_clock.time_of(src_frame)
            with self._marker_lock:
                self._markers.append((at + pos, t_cap))
        dur = y.size / sr
        self._since_underrun += dur
        if self._since_underrun >= MARGIN_DECAY_AFTER_S:
            self._margin_s = max(MARGIN_START_S, self._margin_s - MARGIN_DECAY_S)
            self._since_underrun = 0.0
        eng = self.engine
        block_s = eng.block / SAMPLE_RATE if eng is not None and self._path == "convert" else dur
        limit = int(sr * (max(block_s, DROP_FLOOR_S) + 2 * allow + 0.05))
        if fifo.level > limit:
            m.incr("voice.dropped_output_samples", fifo.drop(fifo.level - int(sr * (max(block_s, DROP_FLOOR_S)
                                                                                       + 2 * allow))))
        m.set_gauge("voice.output_margin_ms", self._margin_s * 1000.0)
        lat = self.latency_s()
        m.set_gauge("voice.latency_ms", None if lat is None else lat * 1000.0)
