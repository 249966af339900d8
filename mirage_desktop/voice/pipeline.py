"""``VoicePipeline``: microphone → 16 kHz → VoiceEngine → device rate → virtual microphone.

Threads: the PortAudio input callback only copies mono audio into a bounded queue; a worker
thread resamples to 16 kHz, runs the engine (converter + SOLA + control) as soon as a block's
samples are in, and resamples to the output rate into a FIFO; the output callback plays from
the FIFO. The output stream uses 10 ms callbacks (``voice_device_block_ms``), the input stream
5 ms ones (half of it); PortAudio gives the ALSA ``pulse`` device two callbacks of buffering, so
it reports 10 ms for the input (was 20) and 20 ms for the output. 5 ms output callbacks (with
two, three or four of buffering) underflowed at the device 3-16 times in 20 s with the machine's
load average at 6-7 on 2 cores, 10 ms ones 0-1 times; a late input callback loses nothing (the
sound server keeps the recorded audio), so only the input got shorter.

Block size: ``voice_block_ms`` 0 (the default) starts at the smallest block the real-time
controller can choose (32, 64, ... 480 ms) whose timed conversions of a voiced window all come
in under the accept ratio (runtime/real < 0.65); the controller then grows and shrinks it by its
rules (engine.py). The converter's context keeps its analysis window long whatever the block
(WORLD: 96 ms of history), so a short block is a short hop, not a short window. The pass-through
converter starts at 20 ms.

Output timing: a block is played as soon as it is in the FIFO, except that when it finds the
FIFO empty (stream start, or after an underrun) it is preceded by silence, so that later blocks
may take the longest recent conversion time (``proc_ref``: the maximum over the last 50
converted blocks, first estimated by the start block's timed conversions) plus ``margin`` longer than
this one did. That matters because silent blocks skip the converter: without it the first
word after a pause would arrive ~30 ms late and underrun. The margin (callback and scheduling
jitter) starts at 10 ms, grows by 10 ms per underrun (up to 120 ms) and shrinks by 5 ms after
10 s of audio without one (was 100 blocks, which is 2 s at 20 ms blocks: the margin came down
before the load that caused the underrun had gone, and underran again). Slack that is no
longer needed (over the last 16 blocks, the FIFO level just before each block plus its
processing time stayed more than 10 ms above proc_ref + margin) is cut from the start of the
next silent block, so the latency comes back down without a click; the room judged is then
lowered by the cut, so the next silent blocks can take the rest without waiting another 16
blocks (with 20-32 ms blocks, one block's worth per 16 was too slow).
Input beyond two blocks of backlog and output beyond max(block, 200 ms) + 2 × (proc_ref +
margin) + 50 ms (after a stalled device or worker) are dropped (latency beats completeness) and
counted; the 200 ms floor keeps small blocks from dropping voiced audio after every scheduling
stall of a loaded machine (the slack rule takes the extra latency back out in the next pause).

Target latency (:meth:`VoicePipeline.set_target_latency_s`, for lip sync): the latency a block
would have (its capture time against when its first sample will play by the output stream's
clock) is compared with the target; a silent block that would be more than 5 ms early gets zeros
in front of it up to 5 ms past the target, an empty FIFO is padded to the target, and the slack
rule cuts only what is both unneeded and above the target. Voiced audio is never stretched, cut or
delayed within a talk spurt: a target set mid-word applies from the next silence. The room a
target asked for is not dropped as stalled output when the target goes away; it is cut in silence.

Modes: ``mode="voice"`` (default) is the voice changer; ``mode="lipsync"`` is the lip-sync
microphone: the converter is pass-through whatever the settings say, 20 ms blocks, no SOLA
(nothing to join: the audio is not changed), a live converter switch is refused. Start it with
``VoicePipeline(settings, metrics, mode="lipsync")`` where ``settings.voice_input`` is the
microphone and ``settings.voice_output`` the virtual microphone ("Mirage Microphone"), then call
``set_target_latency_s(video latency)`` whenever the video's latency changes. Its natural latency
is about 20 (block) + 30 (devices) + 10 (margin) + a few ms of callback phase, so any video path
slower than that can be matched.

Measured end-to-end latency: each processed block is tagged with the input sample it came
from and its position in the output FIFO. Capture times come from the input stream's clock
(``perf_counter`` at the callback minus the frames since; the earliest callback of the recent
past is taken as on time, so late callbacks do not bias it; see "The input" below). Play times
come from PortAudio's callback ``time_info``: ``outputBufferDacTime - currentTime`` (ALSA
fills both from the device's status and delay; only the difference is used, ``currentTime``
being on a clock of its own) added to ``perf_counter`` at the callback, the
median over the last 9 callbacks (:meth:`StreamClock.update_exact`); the stream's static output
latency (and the earliest-callback rule) only when the host API reports no times. Measured
through the ALSA ``pulse`` device: after an output stall or underrun the sound server plays
every later frame hundreds of ms later (a 400 ms stall in the output callback: +591 ms) while
the callbacks keep coming at the device rate, so a clock from callback times alone stayed that
far behind (the likely cause of the lip-sync test's clicks leaving 1221 ms after capture with
210 ms reported); the reported delay has it at once (a click looped into an input: to 1 ms).

The input: the earliest callback (the on-time one) comes as its last frame is captured, so the
stream's reported input latency (its buffer) is no longer subtracted for a device whose host API
reports times: looping a click from an output (reported play time) into a ``pulse`` input, the
capture time with the reported 10 ms subtracted came 12 ms before the click was played (20 ms
input latency at 10 ms callbacks: 20-36 ms before), without it 2-3 ms before; that, in the
pipeline and in the test's recorder, was the steady +19..+25 ms flash-before-click offset (the
video held 20 ms too long). Scripted devices (no times reported) keep the reported latency as a
delay. The input's reported times themselves are not used: through the
``pulse`` device they were 300-700 ms off for the first 1.5 s of a stream (a click looped from
an output into the input's source measured -716 ms), while a stall there only delays the
callbacks, which the input clock sees. The difference for each tagged sample goes to
``voice.latency_e2e``; :meth:`VoicePipeline.latency_s` is the median of the last 5 (the A/V sync
reads it from the video's output thread). It was the median of 32, which at 64 ms blocks is 2 s
of audio: the slack rule took the voice changer from 239 to 152 ms in the pauses between two
clicks, the median followed a second later and the video was held 80 ms too long; 5 markers
still outvote one odd one.

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

INPUT_BLOCK_FRACTION = 0.5  # input callbacks are this fraction of voice_device_block_ms (5 of 10 ms)
OUTPUT_PERIODS = 2  # output device buffer in callbacks (the bench's --output-periods tries others)
PASSTHROUGH_BLOCK_MS = 20.0  # start block of the pass-through converter (nothing to amortise)
LIPSYNC_BLOCK_MS = 20.0  # mode="lipsync": the block (and no SOLA: the audio is not changed)
START_PROBE_RUNS = 3  # timed conversions per candidate start block
START_PROBE_BUDGET_S = 3.0  # stop probing smaller start blocks after this long (slow converters)
FALLBACK_START_MS = 192.0  # start block when no candidate passed within the budget
LATENCY_WINDOW = 5  # recent measured latencies latency_s() takes the median of (was 32: see the docstring)
LATENCY_MIN_MARKERS = 3  # fewer than this: latency_s() is the estimate
FILL_TOLERANCE_S = 0.005  # below the target latency by more than this: silence is inserted up to this above it
MAX_TARGET_S = 2.0
DROP_FLOOR_S = 0.2  # output is dropped beyond max(block, this) + 2 x (proc_ref + margin) + 50 ms
MARGIN_START_S = 0.010  # jitter allowance on top of the longest recent conversion time
MARGIN_STEP_S = 0.010  # + per underrun
MARGIN_MAX_S = 0.120
MARGIN_DECAY_S = 0.005  # - after MARGIN_DECAY_AFTER_S of audio without an underrun
MARGIN_DECAY_AFTER_S = 10.0  # (was 100 blocks: 19 s at 192 ms, but 2 s at 20 ms, too soon to tell)
SLACK_WINDOW = 16  # blocks over which unneeded output slack is judged
SLACK_TOLERANCE_S = 0.010
MAX_DAC_DELAY_S = 5.0  # an output delay reported above this is taken as a bad report (static latency used)
EXACT_WINDOW = 9  # output callbacks whose reported play times the output clock takes the median of
PROC_WINDOW = 50  # converted blocks over which the longest processing time is taken


def median_s(sorted_ms: list[float]) -> float:
    """The median (s) of sorted latencies in ms (the voice paths' latency_s)."""
    n = len(sorted_ms)
    mid = sorted_ms[n // 2] if n % 2 else 0.5 * (sorted_ms[n // 2 - 1] + sorted_ms[n // 2])
    return mid / 1000.0


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
        self._exact: collections.deque = collections.deque(maxlen=EXACT_WINDOW)

    def update(self, t: float, frames_before: int) -> None:
        v = t - frames_before / self.sr
        if self.base is None or v - self.base > self.reset_s:
            self.base = v
        else:
            self.base = min(self.base + self.leak * max(0.0, t - self._t), v)
        self._t = t

    def update_exact(self, t: float, frames_before: int) -> None:
        """``t``: when frame ``frames_before`` is played, as the host API reports it at this
        callback (PortAudio's ``outputBufferDacTime``; callback lateness is not in it). The base is
        the median of the last :data:`EXACT_WINDOW` such values: it follows a device buffer that
        grew (or shrank) within a few callbacks, and one odd report does not move it."""
        self._exact.append(t - frames_before / self.sr)
        vals = sorted(self._exact)
        self.base = vals[len(vals) // 2]
        self._t = t

    def time_of(self, frame: float) -> float:
        return (self.base or 0.0) + frame / self.sr


def _dac_delay_s(time_info) -> float | None:
    """How long after the callback its first output frame is played, from PortAudio's callback
    ``time_info`` (``outputBufferDacTime - currentTime``: ALSA fills both from the device's status
    and delay, on a clock of its own, so only the difference is used); None when the host API does
    not report it (zeros, or no time_info) or reports something implausible."""
    try:
        dac, cur = float(time_info.outputBufferDacTime), float(time_info.currentTime)
    except (AttributeError, TypeError, ValueError):
        return None
    if dac <= 0.0 or cur <= 0.0:
        return None
    d = dac - cur
    return d if 0.0 <= d < MAX_DAC_DELAY_S else None


def _adc_reported(time_info) -> bool:
    """Whether the host API reports capture times (``inputBufferAdcTime``) at input callbacks."""
    try:
        return float(time_info.inputBufferAdcTime) > 0.0
    except (AttributeError, TypeError, ValueError):
        return False


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

    def write(self, x: np.ndarray, pad_if_empty: int = 0, insert: int = 0, insert_at: int = 0) -> tuple[int, int, int]:
        """Append ``x``; when the FIFO is empty, first ``pad_if_empty`` zeros; otherwise (the pad
        covers it) ``insert`` zeros in front of ``x[insert_at]`` (the caller passes it only for
        silent audio). Returns (write index of ``x[0]``, level just before the call, zeros inserted)."""
        with self._lock:
            before = self._level
            padded = before == 0 and pad_if_empty > 0
            if padded:
                self._append(np.zeros(pad_if_empty, dtype=np.float32))
            at = self.written
            if insert > 0 and not padded and 0 <= insert_at <= x.size:
                self._append(x[:insert_at])
                self._append(np.zeros(insert, dtype=np.float32))
                self._append(x[insert_at:])
            else:
                insert = 0
                self._append(x)
        return at, before, insert

    def _append(self, x: np.ndarray) -> None:  # with the lock held
        if x.size:
            self._chunks.append(x)
            self._level += x.size
            self.written += x.size

    def read_into(self, out: np.ndarray) -> int:
        return self.read_into_at(out)[1]

    def read_into_at(self, out: np.ndarray) -> tuple[int, int]:
        """Like :meth:`read_into`, and the read position the samples start at (taken under the
        same lock, so a concurrent :meth:`drop` cannot shift it)."""
        n, got = out.size, 0
        with self._lock:
            start = self.read
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
        return start, got

    def drop(self, n: int) -> int:
        tmp = np.empty(min(n, self._level), dtype=np.float32)
        return self.read_into(tmp)




class VoicePipeline:
    """Real-time voice changer between two audio devices. See the module docstring.

    ``mode="voice"`` (default): the voice settings as given. ``mode="lipsync"``: the lip-sync
    microphone — ``settings.voice_input`` (the microphone) goes unconverted to
    ``settings.voice_output`` (the virtual microphone) in 20 ms blocks without SOLA, the other
    voice settings are ignored, and :meth:`set_target_latency_s` delays it to the video.
    """

    MODES = ("voice", "lipsync")

    def __init__(self, settings: Settings, metrics: Metrics, mode: str = "voice"):
        if mode not in self.MODES:
            raise MirageError(f"unknown voice pipeline mode {mode!r}", "use 'voice' or 'lipsync'")
        self.mode = mode
        if mode == "lipsync":
            settings = settings.replace(voice_converter="passthrough", voice_bypass=False)
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
        self._since_underrun = 0.0
        self._slack: collections.deque = collections.deque(maxlen=SLACK_WINDOW)
        self._proc: collections.deque = collections.deque(maxlen=PROC_WINDOW)
        self._proc_guess = 0.0
        self._out_buf = np.zeros(0, dtype=np.float32)
        self.sr_in = self.sr_out = 48000
        self._lat_in = self._lat_out = 0.0  # the open streams' reported latencies (s)
        self._out_delay_s = 0.0  # the output callback's last delay to the device (s; see _dac_delay_s)
        self._target_s: float | None = None
        self._recent_lat: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)  # ms
        self._recent_lock = threading.Lock()
        self._proc_ref = 0.0  # proc_ref_s() as of the worker's last block (read by other threads)
        self._held_room = 0  # output samples a target latency asked for, not yet cut (see _emit)
        self._read_offset: int | None = None  # output device frame of FIFO index 0 (output callback)
        self.start_probe: dict[float, float] = {}  # start block (ms) -> worst timed ratio, from the last start

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

        from .engine import CROSSFADE_MS, SEARCH_MS

        conv = make_converter(self.converter_kind, self.settings)
        lipsync = self.mode == "lipsync"
        xf, search = (0.0, 0.0) if lipsync else (CROSSFADE_MS, SEARCH_MS)
        block_ms, self._proc_guess = self._start_block(conv, xf, search)
        return VoiceEngine(conv, self.metrics, block_ms=block_ms, silence_db=self.silence_db,
                           adapt=bool(self.settings.voice_adapt), crossfade_ms=xf, search_ms=search)

    def _start_block(self, conv, crossfade_ms: float, search_ms: float) -> tuple[float, float]:
        """(start block in ms, a first processing-time estimate in s). ``voice_block_ms`` > 0 is
        taken as given; 0 (automatic) is the smallest block the controller can choose whose
        :data:`START_PROBE_RUNS` timed conversions (after one untimed warm-up) all come in under
        the accept ratio (runtime/real < 0.65); the pass-through converter (and the lip-sync mode)
        starts at 20 ms. The timings are kept in :attr:`start_probe`."""
        from .engine import ACCEPT_BELOW, MIN_BLOCK_MS, controller_blocks_ms

        self.start_probe = {}
        if self.mode == "lipsync":
            return LIPSYNC_BLOCK_MS, 0.0
        if self.block_ms > 0:
            return self.block_ms, self._time_conversions(conv, self.block_ms, crossfade_ms, search_ms, 1)
        if conv.name == "passthrough":
            return PASSTHROUGH_BLOCK_MS, 0.0
        self._time_conversions(conv, MIN_BLOCK_MS, crossfade_ms, search_ms, 1)  # warms caches up
        t0 = time.perf_counter()
        for b in controller_blocks_ms(MIN_BLOCK_MS):
            worst = self._time_conversions(conv, b, crossfade_ms, search_ms, START_PROBE_RUNS)
            self.start_probe[b] = worst / (b / 1000.0)
            if worst / (b / 1000.0) < ACCEPT_BELOW:
                return b, worst
            if time.perf_counter() - t0 > START_PROBE_BUDGET_S:
                break
        log.info("voice: no start block passed the probe (%s); starting at %.0f ms", self.start_probe,
                 FALLBACK_START_MS)
        return FALLBACK_START_MS, 0.0

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
        self._in_clock, self._out_clock = None, None
        self._margin_s = MARGIN_START_S
        self._playing = False
        self._since_underrun = 0.0
        self._slack.clear()
        self._proc.clear()
        self._proc_ref = self._proc_guess
        self._held_room = 0
        self._read_offset = None
        self._markers.clear()
        with self._recent_lock:
            self._recent_lat.clear()
        self._fifo = SampleFifo()
        dev_s = float(self.settings.voice_device_block_ms) / 1000.0
        dev_block_in = max(64, int(self.sr_in * dev_s * INPUT_BLOCK_FRACTION))
        dev_block_out = max(64, int(self.sr_out * dev_s))
        self._in_stream = open_stream(self.input_dev, self.sr_in, dev_block_in, self._on_input, channels=1)
        self._out_stream = open_stream(self.output_dev, self.sr_out, dev_block_out, self._on_output,
                                       channels=self.output_dev.channels,
                                       latency=OUTPUT_PERIODS * dev_block_out / self.sr_out)
        self._lat_in, self._lat_out = self.device_latencies_s()
        self._out_delay_s = self._lat_out
        self._in_clock, self._out_clock = StreamClock(self.sr_in), StreamClock(self.sr_out)
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

    @staticmethod
    def _time_conversions(conv, block_ms: float, crossfade_ms: float, search_ms: float, runs: int) -> float:
        """The longest of ``runs`` conversions of a voiced window for a ``block_ms`` block, in s
        (0 when the converter fails: the engine reports that when it runs)."""
        from .f0 import harmonic_signal

        tail = int(round(block_ms * SAMPLE_RATE / 1000.0)) + int(crossfade_ms * SAMPLE_RATE / 1000) \
            + int(search_ms * SAMPLE_RATE / 1000)
        n = conv.context + tail
        x = harmonic_signal(150.0, n / SAMPLE_RATE + 0.01)[:n].astype(np.float32)
        worst = 0.0
        try:
            for _ in range(runs):
                t0 = time.perf_counter()
                conv.convert(x, tail, {})
                worst = max(worst, time.perf_counter() - t0)
        except Exception as exc:
            log.debug("voice: timing conversion failed: %s", exc)
            return 0.0
        return worst

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

            if self.mode == "lipsync":
                raise MirageError("the lip-sync microphone passes the voice through unconverted",
                                  "start a VoicePipeline in mode 'voice' to convert the voice")

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
        return self.engine.algorithmic_latency_ms() + self.resampler_delay_s() * 1000.0 + dev

    def resampler_delay_s(self) -> float:
        """Both stream resamplers' delays (device rate <-> 16 kHz)."""
        if getattr(self, "_rs_in", None) is None:
            return 0.0
        return self._rs_in.delay_s + self._rs_out.delay_s

    def device_latencies_s(self) -> tuple[float, float]:
        """(input, output) latency PortAudio reports for the open streams; 0 for a closed one."""
        out = []
        for s in (self._in_stream, self._out_stream):
            try:
                out.append(float(s.latency) if s is not None else 0.0)
            except Exception:
                out.append(0.0)
        return out[0], out[1]

    # --- latency API (any thread; cheap) ----------------------------------------------
    def latency_s(self) -> float | None:
        """The current capture → virtual-microphone latency (s): the median of the last
        :data:`LATENCY_WINDOW` measured latencies (the markers of ``voice.latency_e2e``; a median,
        so one late callback does not move it), or :meth:`estimated_latency_s` while fewer than
        :data:`LATENCY_MIN_MARKERS` have been measured since the start. None when not running.
        Thread-safe and cheap (a copy of 32 floats under a lock the output callback holds for one
        append)."""
        if not self._running:
            return None
        with self._recent_lock:
            recent = sorted(self._recent_lat)
        if len(recent) < LATENCY_MIN_MARKERS:
            return self.estimated_latency_s()
        return median_s(recent)

    def estimated_latency_s(self) -> float | None:
        """What the latency should be before any is measured: block + SOLA + resamplers + the
        devices' reported latencies (:meth:`algorithmic_latency_ms`) + the output schedule (longest
        recent conversion + margin), and at least the target. None when not running."""
        eng = self.engine
        if not self._running or eng is None:
            return None
        est = (eng.algorithmic_latency_ms() / 1000.0 + (self._rs_in.delay_s + self._rs_out.delay_s)
               + self._lat_in + self._lat_out + self._proc_ref + self._margin_s)
        target = self._target_s
        return max(est, target) if target is not None else est

    def set_target_latency_s(self, x: float | None) -> None:
        """Make the capture → output latency at least ``x`` s (lip sync: wait for a slower video
        path); None: no target (the latency is as low as the schedule allows). The latency moves
        toward the target only in silence: zeros are inserted in front of a silent block (or when
        the output FIFO is empty) and excess silence is cut by the slack rule; voiced audio is never
        stretched or skipped. Any thread; takes effect from the next block. Values above
        :data:`MAX_TARGET_S` (2 s) are taken as 2 s; a negative or NaN value or a non-number raises
        MirageError. Gauge ``voice.target_latency_ms``."""
        if x is not None:
            try:
                x = float(x)
            except (TypeError, ValueError):
                raise MirageError(f"target latency {x!r} is not a number", "pass seconds, e.g. 0.12, or None") from None
            if not x >= 0.0:  # also NaN
                raise MirageError(f"target latency {x:g} s is out of range",
                                  f"use 0..{MAX_TARGET_S:g} s, or None for no target")
            x = min(x, MAX_TARGET_S)  # a video path that far behind is not waited for any longer
        self._target_s = x
        self.metrics.set_gauge("voice.target_latency_ms", None if x is None else x * 1000.0)

    def target_latency_s(self) -> float | None:
        return self._target_s

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
            "proc_ref_ms": self._proc_ref * 1000.0,
            "mode": self.mode,
            "latency_ms": None if (lat := self.latency_s()) is None else lat * 1000.0,
            "target_latency_ms": None if self._target_s is None else self._target_s * 1000.0,
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
        if self._in_clock is not None:  # frame n was captured at time_of(n) (see the module docstring)
            # a host API that reports capture times is a real device: its on-time callback comes as
            # its last frame is captured, the reported buffer latency is not in it; without reported
            # times (scripted devices) the reported latency is taken as a delay before the callback
            real = _adc_reported(time_info)
            self._in_clock.update(now - (0.0 if real else self._lat_in), self._in_frames)
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
                self._since_underrun = 0.0
            self._playing = got > 0
        else:
            self._playing = True
        f_a = self._out_frames  # device frame of buf[0]
        self._read_offset = f_a - r_a  # device frame minus FIFO index, while it keeps playing
        self._out_frames += frames
        clock = self._out_clock
        delay = _dac_delay_s(time_info)  # buf[0] plays this long after now (None: not reported)
        if clock is not None:  # the clock's times are play times (the output latency is in them)
            if delay is not None:
                clock.update_exact(now + delay, f_a)
            else:
                clock.update(now + self._lat_out, f_a)
        self._out_delay_s = self._lat_out if delay is None else delay
        if got and clock is not None:
            r_b = r_a + got
            while self._markers and self._markers[0][0] < r_b:
                w0, t_cap = self._markers.popleft()
                if w0 >= r_a:
                    ms = (clock.time_of(f_a + (w0 - r_a)) - t_cap) * 1000.0
                    self.metrics.record("voice.latency_e2e", ms)
                    with self._recent_lock:
                        self._recent_lat.append(ms)
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

    def _capture_time(self) -> float | None:
        """Capture time (perf_counter) of the input sample the most recent block's first output
        sample came from, or None before the input clock has a callback."""
        clock = self._in_clock
        if clock is None or clock.base is None:
            return None
        return clock.time_of(self.engine.source_offset() * self.sr_in / SAMPLE_RATE)

    def _play_time(self, w: int) -> float:
        """When FIFO sample ``w`` (write index) will play (perf_counter), by the output stream's
        clock as the measured latency has it; no earlier than the next callback can take it."""
        soonest = time.perf_counter() + self._out_delay_s
        clock, off = self._out_clock, self._read_offset
        return soonest if clock is None or clock.base is None or off is None else max(soonest, clock.time_of(w + off))

    def _emit(self, out16: np.ndarray, sr_ratio_out: float, t_ready: float) -> None:
        """Resample one processed block and queue it for the output callback (see the module
        docstring for the margin, slack and target rules); tag it for the measured latency.
        ``t_ready``: perf_counter when the block's input was complete (before processing)."""
        eng, m, fifo = self.engine, self.metrics, self._fifo
        start_out16 = eng.produced - out16.size
        y = self._rs_out.process(out16)
        proc = time.perf_counter() - t_ready
        if not eng.last_silent and eng.active_converter != "passthrough":
            self._proc.append(proc)
            m.record("voice.proc_converted_ms", proc * 1000.0)
        self._proc_ref = self.proc_ref_s()
        # position in y of this block's first sample (y also ends the previous block: resampler delay)
        pos = int(round(start_out16 * sr_ratio_out)) - (self._rs_out.n_out - y.size)
        sr = self.sr_out
        allow = int((self._proc_ref + self._margin_s) * sr)  # room later blocks need
        proc_n = int(proc * sr)
        t_cap = self._capture_time() if pos >= 0 else None
        target = self._target_s
        # how far this block's first sample would be below the target latency (samples; < 0: above)
        deficit = None
        if target is not None and t_cap is not None:
            deficit = int((target - (self._play_time(fifo.written + pos) - t_cap)) * sr)
        need_target = None if deficit is None else fifo.level + pos + deficit  # as a FIFO level
        silent = eng.last_silent and pos >= 0
        trim = 0
        if silent and len(self._slack) == SLACK_WINDOW:
            excess = min(self._slack) - allow
            if deficit is not None:  # never below the target
                excess = min(excess, -deficit)
            if excess > SLACK_TOLERANCE_S * sr:  # cut from this (silent) block's start
                trim = min(int(excess), y.size - pos)
                y = np.concatenate([y[:pos], y[pos + trim:]])
                self._shift_slack(-trim)  # the room left is the room judged less the cut
                m.incr("voice.trimmed_output_samples", trim)
        pad = max(0, allow - proc_n, deficit or 0)  # an empty FIFO: this block plays at once
        # below the target by more than the tolerance: fill to the tolerance above it (the slack rule
        # cuts only 10 ms above it, so the latency settles in between, at least the target)
        tol = int(FILL_TOLERANCE_S * sr)
        insert = deficit + tol if (silent and not trim and deficit is not None and deficit > tol) else 0
        at, before, filled = fifo.write(y, pad_if_empty=pad, insert=insert, insert_at=max(0, pos))
        if filled:  # silence inserted to reach the target: every later block has that much more room
            self._shift_slack(filled)
            m.incr("voice.inserted_output_samples", filled)
        m.record("voice.out_queue_ms", ((before or pad) + filled + proc_n) * 1000.0 / sr)
        if before > 0:  # what the FIFO held plus the time this block took: its room (less this block's cut)
            self._slack.append(before + filled + proc_n - trim)
        else:
            self._slack.clear()
        if t_cap is not None and not trim:
            self._markers.append((at + pos + filled, t_cap))
        self._since_underrun += eng.block / SAMPLE_RATE  # seconds of audio since the last underrun
        if self._since_underrun >= MARGIN_DECAY_AFTER_S:
            self._margin_s = max(MARGIN_START_S, self._margin_s - MARGIN_DECAY_S)
            self._since_underrun = 0.0
        # room a target asked for is not "stalled output": it is kept until the slack rule has cut
        # it in silence (the held room follows the level down, never up)
        self._held_room = max(need_target or 0, min(self._held_room, fifo.level))
        limit = int(sr * max(eng.block / SAMPLE_RATE, DROP_FLOOR_S)) + 2 * allow + self._held_room
        if fifo.level > limit + int(0.05 * self.sr_out):
            dropped = fifo.drop(fifo.level - limit)
            m.incr("voice.dropped_output_samples", dropped)
        m.set_gauge("voice.output_margin_ms", self._margin_s * 1000.0)
        m.set_gauge("voice.proc_ref_ms", self._proc_ref * 1000.0)

    def _process_input(self, block: np.ndarray) -> int:
        """One input callback's samples: resample, run every block that is complete, queue the
        output. Returns the number of blocks processed (the worker's loop body; tests call it)."""
        eng, m = self.engine, self.metrics
        eng.push(self._rs_in.process(block))
        backlog = eng.pending() + self._in_q.qsize() * block.size * SAMPLE_RATE / self.sr_in
        m.set_gauge("voice.backlog_ms", backlog * 1000.0 / SAMPLE_RATE)
        if eng.pending() > 2 * eng.block:
            eng.drop_backlog(keep_blocks=1)
        n = 0
        while eng.ready():
            t_ready = time.perf_counter()
            self._emit(eng.step(), self.sr_out / SAMPLE_RATE, t_ready)
            n += 1
        if n:  # gauges once per block, not per device callback
            alg = self.algorithmic_latency_ms()
            if alg is not None:
                m.set_gauge("voice.latency_algorithmic_ms", alg)
            e2e = m.histogram("voice.latency_e2e").summary()
            if e2e["p50"] is not None:
                m.set_gauge("voice.latency_measured_ms", e2e["p50"])
            lat = self.latency_s()
            m.set_gauge("voice.latency_ms", None if lat is None else lat * 1000.0)
        return n

    def _shift_slack(self, n: int) -> None:
        self._slack = collections.deque((v + n for v in self._slack), maxlen=SLACK_WINDOW)

    def _work(self) -> None:
        m = self.metrics
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
                self._process_input(block)
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
