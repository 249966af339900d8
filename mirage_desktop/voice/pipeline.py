"""``VoicePipeline``: microphone → 16 kHz → VoiceEngine → device rate → virtual microphone.

Threads: the PortAudio input callback only copies mono audio into a bounded queue; a worker
thread resamples to 16 kHz, runs the engine (converter + SOLA + control) and resamples to the
output rate into a FIFO; the output callback plays from the FIFO (silence on underrun, after
which it waits for a small cushion to refill; the cushion grows by 10 ms per underrun, up to
one block). Input beyond two blocks of backlog and output beyond block + 2 cushions are dropped
(latency beats completeness) and counted.

Measured end-to-end latency: each processed block is tagged with the input sample it came
from; the input callback stamps capture times (``perf_counter`` minus the stream's input
latency), the output callback stamps play times (``perf_counter`` plus the output latency) when
the tagged sample is handed to the device. Their difference goes to ``voice.latency_e2e``.

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

from ..config import Settings
from ..errors import DeviceError, MirageError
from ..metrics import Metrics
from . import SAMPLE_RATE

log = logging.getLogger(__name__)


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

    def write(self, x: np.ndarray) -> None:
        if x.size:
            with self._lock:
                self._chunks.append(x)
                self._level += x.size
                self.written += x.size

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


def _extra(settings: Settings, key: str, default):
    return (settings.extra or {}).get(key, default)


class VoicePipeline:
    """Real-time voice changer between two audio devices. See the module docstring."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.converter_kind = str(_extra(settings, "voice_converter", "world"))
        self.block_ms = float(_extra(settings, "voice_block_ms", 192.0))
        self.silence_db = float(_extra(settings, "voice_silence_db", -50.0))
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
        self._in_map = (0, 0.0)  # (input frames so far, capture time of the last one)
        self._in_frames = 0
        self._cushion = 0
        self._priming = True
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
                           adapt=bool(_extra(self.settings, "voice_adapt", True)))

    def _open(self) -> None:
        from .audio_io import open_stream, resolve_device
        from .resample import StreamResampler

        self.error = None
        self.engine = self._build_engine()
        self.engine.bypass = bool(_extra(self.settings, "voice_bypass", False))
        self.input_dev = resolve_device(self.settings.voice_input, "input")
        self.output_dev = resolve_device(self.settings.voice_output, "output")
        self.sr_in = int(_extra(self.settings, "voice_samplerate", 0) or self.input_dev.samplerate)
        self.sr_out = int(_extra(self.settings, "voice_samplerate", 0) or self.output_dev.samplerate)
        self._rs_in = StreamResampler(self.sr_in, SAMPLE_RATE)
        self._rs_out = StreamResampler(SAMPLE_RATE, self.sr_out)
        self._cushion = int(0.03 * self.sr_out)
        dev_block_in = max(64, int(self.sr_in * 0.01))
        dev_block_out = max(64, int(self.sr_out * 0.01))
        self._in_stream = open_stream(self.input_dev, self.sr_in, dev_block_in, self._on_input, channels=1)
        self._out_stream = open_stream(self.output_dev, self.sr_out, dev_block_out, self._on_output,
                                       channels=self.output_dev.channels)
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="VoiceWorker", daemon=True)
        self._running = True
        self._thread.start()
        try:
            self._out_stream.start()
            self._in_stream.start()
        except Exception as exc:
            from .audio_io import device_error

            self.stop()
            raise device_error(exc, self.output_dev) from exc
        log.info("voice: %s @%d Hz -> %s @%d Hz, converter %s", self.input_dev.label(), self.sr_in,
                 self.output_dev.label(), self.sr_out, self.engine.converter.name)

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
            self.settings.extra = {**(self.settings.extra or {}), "voice_bypass": not on}
            return
        if name == "converter":
            from .converters import CONVERTERS

            if value not in CONVERTERS:
                raise MirageError(f"unknown voice converter {value!r}", f"use one of: {', '.join(CONVERTERS)}")
            self.converter_kind = str(value)
            if self.engine is not None:
                self._pending_options.put(("converter", value))
            return
        if name == "pitch":
            self.settings.voice_pitch = float(value)
        elif name == "formant":
            self.settings.voice_formant = float(value)
        elif name in ("preset", "f0_method", "speaker"):
            key = {"preset": "voice_preset", "f0_method": "voice_f0_method", "speaker": "voice_speaker"}[name]
            self.settings.extra = {**(self.settings.extra or {}), key: value}
        else:
            raise MirageError(f"unknown voice option {name!r}",
                              "use pitch, formant, preset, f0_method, speaker, enabled, bypass or converter")
        if self.engine is not None:
            self.engine.converter.set_option(name, value)  # validates; raises MirageError if bad
            self.engine.clear_fallback()

    # --- status --------------------------------------------------------------
    def algorithmic_latency_ms(self) -> float | None:
        """Engine (block + crossfade + SOLA search) + both resamplers' delays + the input and
        output latencies PortAudio reports for the open streams. Excludes processing time and
        the output cushion, which the measured latency includes."""
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
        try:
            lat = float(self._in_stream.latency) if self._in_stream is not None else 0.0
        except Exception:
            lat = 0.0
        self._in_map = (self._in_frames, now - lat)
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
        lead = 0
        if self._priming:
            if self._fifo.level >= self._cushion:
                self._priming = False
        if not self._priming:
            r_a = self._fifo.read
            got = self._fifo.read_into(buf)
            if got < frames:
                self.metrics.incr("voice.underruns")
                self._priming = True
                self._cushion = min(self._cushion + int(0.01 * self.sr_out),
                                    int(self.sr_out * self.engine.block / SAMPLE_RATE) if self.engine else self._cushion)
            r_b = r_a + got
            try:
                lat = float(self._out_stream.latency) if self._out_stream is not None else 0.0
            except Exception:
                lat = 0.0
            while self._markers and self._markers[0][0] < r_b:
                w0, t_cap = self._markers.popleft()
                if w0 >= r_a:
                    t_play = now + lat + (lead + w0 - r_a) / self.sr_out
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
                    out16 = eng.step()
                    start_out16 = eng.produced - out16.size
                    y = self._rs_out.process(out16)
                    # tag: output sample of this block's first sample ↔ its source input sample
                    src16 = eng.source_offset()
                    n_in, t_last = self._in_map
                    p = src16 * self.sr_in / SAMPLE_RATE
                    t_cap = t_last - (n_in - p) / self.sr_in
                    w0 = int(round(start_out16 * sr_ratio_out))
                    self._markers.append((w0, t_cap))
                    self._fifo.write(y)
                    limit = int(self.sr_out * eng.block / SAMPLE_RATE) + 2 * self._cushion
                    if self._fifo.level > limit + int(0.05 * self.sr_out):
                        dropped = self._fifo.drop(self._fifo.level - limit)
                        m.incr("voice.dropped_output_samples", dropped)
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


def start_if_enabled(settings: Settings, metrics: Metrics) -> VoicePipeline | None:
    """For ``mirage run``: a started pipeline when ``settings.enable_voice``, else None. Never raises
    for device problems (they are in ``status()["error"]`` and logged)."""
    if not settings.enable_voice:
        return None
    pipe = VoicePipeline(settings, metrics)
    pipe.start()
    return pipe
