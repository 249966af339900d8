"""``VoicePipeline``: microphone → 16 kHz → VoiceEngine → device rate → virtual microphone.

Threads: the PortAudio input callback only copies mono audio into a bounded queue; a worker
thread resamples to 16 kHz, runs the engine (converter + SOLA + control) as soon as a block's
samples are in, and resamples to the output rate into a FIFO; the output callback plays from
the FIFO. Both device streams use 10 ms callbacks (``voice_device_block_ms``; PortAudio
asks the ALSA ``pulse`` device for two periods of buffering, so it reports 20 ms per stream).
5 ms callbacks halve that but, on a loaded 2-core machine, the output device underflows.

Output timing: a block is played as soon as it is in the FIFO, except that when it finds the
FIFO empty (stream start, or after an underrun) it is preceded by silence, so that later blocks
may take the longest recent conversion time (``proc_ref``: the maximum over the last 50
converted blocks, first estimated by one conversion at start-up) plus ``margin`` longer than
this one did. That matters because silent blocks skip the converter: without it the first
word after a pause would arrive ~30 ms late and underrun. The margin (callback and scheduling
jitter) starts at 10 ms, grows by 10 ms per underrun (up to 120 ms) and shrinks by 5 ms after
100 blocks without one. Slack that is no longer needed (over the last 16 blocks, the FIFO level
just before each block plus its processing time stayed more than 10 ms above proc_ref +
margin) is cut from the start of the next silent block, so the latency comes back down without
a click. Input beyond two blocks of backlog and output beyond block + 2 margins + 50 ms (after
a stalled device) are dropped (latency beats completeness) and counted.

Measured end-to-end latency: each processed block is tagged with the input sample it came
from and its position in the output FIFO. Capture times come from the input stream's clock
(``perf_counter`` at the callback minus the frames since, minus the stream's input latency;
the earliest callback of the recent past is taken as on time, so late callbacks do not bias
it); play times likewise from the output stream's clock plus its output latency. Their
difference for each tagged sample goes to ``voice.latency_e2e``.

Errors never escape to the caller's process: a device that is missing or busy sets
``status()["error"]`` (and raises only with ``start(strict=True)``, used by ``mirage voice``);
a converter that fails or is too slow makes the engine pass the voice through, with the reason
in ``status()["passthrough_reason"]``; a stream that dies stops the pipeline cleanly.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from ..config import Settings, check
from ..errors import DeviceError, MirageError
from ..metrics import Metrics
from . import SAMPLE_RATE

log = logging.getLogger(__name__)

DEVICE_BLOCK_S = 0.010  # PortAudio callback size for both streams (the voice_device_block_ms setting)
MARGIN_START_S = 0.010  # jitter allowance on top of the longest recent conversion time
MARGIN_STEP_S = 0.010  # + per underrun
MARGIN_MAX_S = 0.120
MARGIN_DECAY_S = 0.005  # - after MARGIN_DECAY_BLOCKS blocks without an underrun
MARGIN_DECAY_BLOCKS = 100
SLACK_WINDOW = 16  # blocks over which unneeded output slack is judged
SLACK_TOLERANCE_S = 0.010
PROC_WINDOW = 50  # converted blocks over which the longest processing time is taken


class StreamClock:
    """Maps a stream's frame count to ``perf_counter`` time from its callbacks.

    Each callback gives ``t - frames/sr`` (the time frame 0 would have had); callbacks are never
    early but often late, so the minimum over the recent past is the on-time estimate. The
    minimum creeps up by ``leak`` s per s (clock drift) and is reset when a callback is more
    than ``reset_s`` later than the estimate (a stalled or restarted device)."""

    def __init__(self, sr: float, leak: float = 1e-3, reset_s: float = 0.05):
        self.sr, self.leak, self.reset_s = float(sr), leak, reset_s
        self.base: float | None = None
        self._t = 0.0

    def update(self, t: float, frames_before: int) -> None:
        v = t - frames_before / self.sr
        if self.base is None or v - self.base > self.reset_s:
            self.base = v
        else:
            self.base = min(self.base + self.leak * max(0.0, t - self._t), v)
        self._t = t

    def time_of(self, frame: float) -> float:
        return (self.base or 0.0) + frame / self.sr


class SampleFifo:
    """Thread-safe FIFO of float32 samples with absolute read/write indices."""

    def __init__(self):
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._level = 0
        self.written = 0
        self.read = 0
        self._lock = threading.Lock()

    @property
    def level(self) -> int:
        return self._level

    def write(self, x: np.ndarray, pad_if_empty: int = 0) -> tuple[int, int]:
        """Append ``x``; when the FIFO is empty, first ``pad_if_empty`` zeros. Returns
        (write index of ``x[0]``, level just before the call)."""
        with self._lock:
            before = self._level
            if before == 0 and pad_if_empty > 0:
                self._chunks.append(np.zeros(pad_if_empty, dtype=np.float32))
                self._level += pad_if_empty
                self.written += pad_if_empty
            at = self.written
            if x.size:
                self._chunks.append(x)
                self._level += x.size
                self.written += x.size
        return at, before

    def read_into(self, out: np.ndarray) -> int:
        n, got = out.size, 0
        with self._lock:
            while got < n and self._chunks:
                c = self._chunks[0]
                take = min(n - got, c.size)
                out[got:got + take] = c[:take]
                got += take
                if take == c.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = c[take:]
            self._level -= got
            self.read += got
        return got

    def drop(self, n: int) -> int:
        tmp = np.empty(min(n, self._level), dtype=np.float32)
        return self.read_into(tmp)




class VoicePipeline:
    """Real-time voice changer between two audio devices. See the module docstring."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.converter_kind = settings.voice_converter
        self.block_ms = float(settings.voice_block_ms)
        self.silence_db = float(settings.voice_silence_db)
        self.engine = None
        self.error: str | None = None
        self.input_dev = self.output_dev = None
        self._in_stream = self._out_stream = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._running = False
        self._in_q: queue.Queue = queue.Queue(maxsize=256)
        self._fifo = SampleFifo()
        self._pending_options: queue.Queue = queue.Queue()
        self._markers: collections.deque = collections.deque(maxlen=64)
        self._in_frames = 0
        self._out_frames = 0
        self._in_clock = self._out_clock = None
        self._margin_s = MARGIN_START_S
        self._playing = False
        self._since_underrun = 0
        self._slack: collections.deque = collections.deque(maxlen=SLACK_WINDOW)
        self._proc: collections.deque = collections.deque(maxlen=PROC_WINDOW)
        self._proc_guess = 0.0
        self._out_buf = np.zeros(0, dtype=np.float32)
        self.sr_in = self.sr_out = 48000

    # --- lifecycle -----------------------------------------------------------
    def start(self, strict: bool = False) -> bool:
        """Open the devices and start. Returns False (error in status()) if it could not, or
        raises MirageError when ``strict``."""
        if self._running:
            return True
        try:
            self._open()
        except MirageError as exc:
            self.error = str(exc)
            log.error("voice: %s", self.error)
            self.metrics.set_gauge("voice.error", self.error)
            self._close_streams()
            if strict:
                raise
            return False
        return True

    def _build_engine(self):
        from .converters import make_converter
        from .engine import VoiceEngine

        conv = make_converter(self.converter_kind, self.settings)
        return VoiceEngine(conv, self.metrics, block_ms=self.block_ms, silence_db=self.silence_db,
                           adapt=bool(self.settings.voice_adapt))

    def _open(self) -> None:
        from .audio_io import open_stream, resolve_device
        from .resample import StreamResampler

        self.error = None
        # fresh queues: input blocks left from a previous run must not be played, and a converter
        # switch queued while stopped is already in converter_kind (built just below)
        self._in_q = queue.Queue(maxsize=256)
        self._pending_options = queue.Queue()
        self.engine = self._build_engine()
        self.engine.bypass = bool(self.settings.voice_bypass)
        self.input_dev = resolve_device(self.settings.voice_input, "input")
        self.output_dev = resolve_device(self.settings.voice_output, "output")
        self.sr_in = int(self.settings.voice_samplerate or self.input_dev.samplerate)
        self.sr_out = int(self.settings.voice_samplerate or self.output_dev.samplerate)
        self._rs_in = StreamResampler(self.sr_in, SAMPLE_RATE)
        self._rs_out = StreamResampler(SAMPLE_RATE, self.sr_out)
        self._in_frames = self._out_frames = 0
        self._in_clock, self._out_clock = StreamClock(self.sr_in), StreamClock(self.sr_out)
        self._margin_s = MARGIN_START_S
        self._playing = False
        self._since_underrun = 0
        self._slack.clear()
        self._proc.clear()
        self._proc_guess = self._warm_up()
        self._markers.clear()
        self._fifo = SampleFifo()
        dev_s = float(self.settings.voice_device_block_ms) / 1000.0
        dev_block_in = max(64, int(self.sr_in * dev_s))
        dev_block_out = max(64, int(self.sr_out * dev_s))
        self._in_stream = open_stream(self.input_dev, self.sr_in, dev_block_in, self._on_input, channels=1)
        self._out_stream = open_stream(self.output_dev, self.sr_out, dev_block_out, self._on_output,
                                       channels=self.output_dev.channels)
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="VoiceWorker", daemon=True)
        self._running = True
        self._thread.start()
        from .audio_io import device_error

        for stream, dev in ((self._out_stream, self.output_dev), (self._in_stream, self.input_dev)):
            try:
                stream.start()
            except Exception as exc:  # name the device whose stream failed
                self.stop()
                raise device_error(exc, dev) from exc
        log.info("voice: %s @%d Hz -> %s @%d Hz, converter %s", self.input_dev.label(), self.sr_in,
                 self.output_dev.label(), self.sr_out, self.engine.converter.name)

    def _warm_up(self) -> float:
        """One conversion of a voiced test window (warms caches up); returns its time in s."""
        from .f0 import harmonic_signal

        eng = self.engine
        try:
            n = eng.converter.context + eng.tail
            x = harmonic_signal(150.0, n / SAMPLE_RATE + 0.01)[:n].astype(np.float32)
            t0 = time.perf_counter()
            eng.converter.convert(x, eng.tail, {})
            return time.perf_counter() - t0
        except Exception as exc:  # the engine reports converter failures when it runs
            log.debug("voice: warm-up conversion failed: %s", exc)
            return 0.0

    def proc_ref_s(self) -> float:
        """Longest recent processing time of a converted block (the output schedule allows it)."""
        return max(self._proc) if self._proc else self._proc_guess

    def _close_streams(self) -> None:
        for s in (self._in_stream, self._out_stream):
            if s is not None:
                try:
                    s.abort()
                    s.close()
                except Exception as exc:  # closing a dead device must not raise
                    log.debug("voice: closing stream: %s", exc)
        self._in_stream = self._out_stream = None

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)
        self._thread = None
        self._close_streams()
        self._running = False

    def __enter__(self):
        self.start(strict=True)
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- options -------------------------------------------------------------
    def set_option(self, name: str, value: Any) -> None:
        """Live changes: pitch, formant, preset, f0_method, speaker, enabled, bypass, converter."""
        if name in ("enabled", "bypass"):
            on = bool(value) if name == "enabled" else not bool(value)
            if self.engine is not None:
                self.engine.bypass = not on
                if on:
                    self.engine.clear_fallback()
            self.settings = self.settings.replace(voice_bypass=not on)  # its own copy, never the caller's
            return
        if name == "converter":
            from .converters import CONVERTERS

            if value not in CONVERTERS:
                raise MirageError(f"unknown voice converter {value!r}", f"use one of: {', '.join(CONVERTERS)}")
            self.converter_kind = str(value)
            self.settings = self.settings.replace(voice_converter=str(value))
            if self.engine is not None:
                self._pending_options.put(("converter", value))
            return
        if name not in ("pitch", "formant", "preset", "f0_method", "speaker"):
            raise MirageError(f"unknown voice option {name!r}",
                              "use pitch, formant, preset, f0_method, speaker, enabled, bypass or converter")
        key = {"pitch": "voice_pitch", "formant": "voice_formant", "preset": "voice_preset",
               "f0_method": "voice_f0_method", "speaker": "voice_speaker"}[name]
        if name in ("preset", "f0_method") and value in ("", None):
            # "none" / "the converter's default": nothing to apply to the running converter (a preset
            # already applied stays as it sounds); the next start uses the default
            self.settings = self.settings.replace(**{key: ""})
            return
        # validate before anything is stored: a rejected value must not reach the settings (the
        # next start() would fail on it)
        from .converters import check_option

        check_option(name, value)
        if self.engine is not None:
            self.engine.converter.set_option(name, value)  # the converter's own checks; applies live
        # a new Settings object: the engine's (and the window's) settings are never changed from here
        self.settings = self.settings.replace(**{key: check(key, value)})
        if self.engine is not None:
            self.engine.clear_fallback()

    # --- status --------------------------------------------------------------
    def algorithmic_latency_ms(self) -> float | None:
        """Engine (block + crossfade + SOLA search) + both resamplers' delays + the input and
        output latencies PortAudio reports for the open streams. Excludes processing time and
        the output margin, which the measured latency includes."""
        if self.engine is None:
            return None
        dev = 0.0
        for s in (self._in_stream, self._out_stream):
            if s is not None:
                try:
                    dev += float(s.latency) * 1000.0
                except Exception:
                    pass
        rs = 0.0
        if getattr(self, "_rs_in", None) is not None:
            rs = (self._rs_in.delay_s + self._rs_out.delay_s) * 1000.0
        return self.engine.algorithmic_latency_ms() + rs + dev

    def status(self) -> dict:
        e2e = self.metrics.histogram("voice.latency_e2e").summary()
        st = {
            "running": self._running and self._thread is not None and self._thread.is_alive(),
            "error": self.error,
            "input": self.input_dev.label() if self.input_dev else None,
            "output": self.output_dev.label() if self.output_dev else None,
            "samplerate_in": self.sr_in, "samplerate_out": self.sr_out,
            "algorithmic_latency_ms": self.algorithmic_latency_ms(),
            "measured_latency_ms": e2e["p50"],
            "measured_latency_p95_ms": e2e["p95"],
            "backlog_ms": self.metrics.gauge("voice.backlog_ms", 0.0),
            "output_margin_ms": self._margin_s * 1000.0,
            "proc_ref_ms": self.proc_ref_s() * 1000.0,
            "underruns": self.metrics.counter("voice.underruns"),
            "chunks": self.metrics.counter("voice.chunks"),
        }
        if self.engine is not None:
            eng = self.engine.status()
            eng["engine_latency_ms"] = eng.pop("algorithmic_latency_ms")  # block + crossfade + search only
            st.update(eng)
        else:
            st.update({"converter": None, "passthrough_reason": None})
        return st

    # --- device callbacks (PortAudio threads: copy and return) ----------------
    def _on_input(self, indata, frames, time_info, status) -> None:
        now = time.perf_counter()
        if status:
            self.metrics.incr("voice.input_status")
        mono = indata[:, 0].copy() if indata.shape[1] == 1 else indata.mean(axis=1).astype(np.float32)
        self._in_frames += frames
        if self._in_clock is not None:  # frame n was captured at time_of(n) - input latency
            self._in_clock.update(now, self._in_frames)
        try:
            self._in_q.put_nowait(mono)
        except queue.Full:
            self.metrics.incr("voice.dropped_input_blocks")

    def _on_output(self, outdata, frames, time_info, status) -> None:
        now = time.perf_counter()
        if status:
            self.metrics.incr("voice.output_status")
        if self._out_buf.size != frames:
            self._out_buf = np.zeros(frames, dtype=np.float32)
        buf = self._out_buf
        buf[:] = 0.0
        r_a = self._fifo.read
        got = self._fifo.read_into(buf)
        if got < frames:
            if self._playing:  # ran dry while playing: the next block gets a larger margin
                self.metrics.incr("voice.underruns")
                self._margin_s = min(MARGIN_MAX_S, self._margin_s + MARGIN_STEP_S)
                self._since_underrun = 0
            self._playing = got > 0
        else:
            self._playing = True
        f_a = self._out_frames  # device frame of buf[0]
        self._out_frames += frames
        clock = self._out_clock
        if clock is not None:
            clock.update(now, f_a)
        if got and clock is not None:
            try:
                lat = float(self._out_stream.latency) if self._out_stream is not None else 0.0
            except Exception:
                lat = 0.0
            r_b = r_a + got
            while self._markers and self._markers[0][0] < r_b:
                w0, t_cap = self._markers.popleft()
                if w0 >= r_a:
                    t_play = clock.time_of(f_a + (w0 - r_a)) + lat
                    self.metrics.record("voice.latency_e2e", (t_play - t_cap) * 1000.0)
        outdata[:] = buf[:, None]

    # --- worker --------------------------------------------------------------
    def _apply_pending(self) -> None:
        while True:
            try:
                name, value = self._pending_options.get_nowait()
            except queue.Empty:
                return
            if name == "converter":
                try:
                    from .converters import make_converter

                    self.engine.set_converter(make_converter(value, self.settings))
                except MirageError as exc:
                    self.engine.fallback_reason = f"cannot switch to {value}: {exc}"
                    log.warning("voice: %s", self.engine.fallback_reason)

    def _emit(self, out16: np.ndarray, sr_ratio_out: float, t_ready: float) -> None:
        """Resample one processed block and queue it for the output callback (see the module
        docstring for the margin and slack rules); tag it for the measured latency.
        ``t_ready``: perf_counter when the block's input was complete (before processing)."""
        eng, m, fifo = self.engine, self.metrics, self._fifo
        start_out16 = eng.produced - out16.size
        y = self._rs_out.process(out16)
        proc = time.perf_counter() - t_ready
        if not eng.last_silent and eng.active_converter != "passthrough":
            self._proc.append(proc)
        # position in y of this block's first sample (y also ends the previous block: resampler delay)
        pos = int(round(start_out16 * sr_ratio_out)) - (self._rs_out.n_out - y.size)
        sr = self.sr_out
        allow = int((self.proc_ref_s() + self._margin_s) * sr)  # room later blocks need
        trim = 0
        if len(self._slack) == SLACK_WINDOW and eng.last_silent and pos >= 0:
            excess = min(self._slack) - allow
            if excess > SLACK_TOLERANCE_S * sr:  # cut from this (silent) block's start
                trim = min(int(excess), y.size - pos)
                y = np.concatenate([y[:pos], y[pos + trim:]])
                self._slack.clear()
                m.incr("voice.trimmed_output_samples", trim)
        at, before = fifo.write(y, pad_if_empty=max(0, allow - int(proc * sr)))
        if before > 0:  # what the FIFO held plus the time this block took: its room
            self._slack.append(before + int(proc * sr))
        else:
            self._slack.clear()
        if self._in_clock is not None and self._in_clock.base is not None and pos >= 0 and not trim:
            # capture time of the input sample this block's first output sample came from
            p = eng.source_offset() * self.sr_in / SAMPLE_RATE
            try:
                lat_in = float(self._in_stream.latency) if self._in_stream is not None else 0.0
            except Exception:
                lat_in = 0.0
            self._markers.append((at + pos, self._in_clock.time_of(p) - lat_in))
        self._since_underrun += 1
        if self._since_underrun >= MARGIN_DECAY_BLOCKS:
            self._margin_s = max(MARGIN_START_S, self._margin_s - MARGIN_DECAY_S)
            self._since_underrun = 0
        limit = int(sr * eng.block / SAMPLE_RATE) + 2 * allow
        if fifo.level > limit + int(0.05 * self.sr_out):
            dropped = fifo.drop(fifo.level - limit)
            m.incr("voice.dropped_output_samples", dropped)
        m.set_gauge("voice.output_margin_ms", self._margin_s * 1000.0)
        m.set_gauge("voice.proc_ref_ms", self.proc_ref_s() * 1000.0)

    def _work(self) -> None:
        eng = self.engine
        m = self.metrics
        sr_ratio_out = self.sr_out / SAMPLE_RATE
        try:
            while not self._stop.is_set():
                self._apply_pending()
                try:
                    block = self._in_q.get(timeout=0.1)
                except queue.Empty:
                    if self._in_stream is not None and not self._in_stream.active and not self._stop.is_set():
                        raise DeviceError(f"input device {self.input_dev.label()!r} stopped delivering audio",
                                          "check the device and restart the voice changer")
                    continue
                eng.push(self._rs_in.process(block))
                backlog = eng.pending() + self._in_q.qsize() * block.size * SAMPLE_RATE / self.sr_in
                m.set_gauge("voice.backlog_ms", backlog * 1000.0 / SAMPLE_RATE)
                if eng.pending() > 2 * eng.block:
                    eng.drop_backlog(keep_blocks=1)
                while eng.ready():
                    t_ready = time.perf_counter()
                    self._emit(eng.step(), sr_ratio_out, t_ready)
                alg = self.algorithmic_latency_ms()
                if alg is not None:
                    m.set_gauge("voice.latency_algorithmic_ms", alg)
                e2e = m.histogram("voice.latency_e2e").summary()
                if e2e["p50"] is not None:
                    m.set_gauge("voice.latency_measured_ms", e2e["p50"])
        except MirageError as exc:
            self.error = str(exc)
            log.error("voice: %s", self.error)
        except Exception as exc:  # never take the process down
            self.error = f"voice worker failed: {' '.join(str(exc).split())}"
            log.exception("voice worker failed")
        finally:
            if self.error:
                m.set_gauge("voice.error", self.error)
                self._running = False
                self._close_streams()
