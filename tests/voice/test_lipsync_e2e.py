"""Lip sync end to end through real devices: a flash on the camera and a click on the microphone at
the same instants must leave the virtual camera and the virtual microphone together.

The camera is a source that shows a white frame exactly at given instants (it waits for each one
instead of its next frame time, so the flash is not quantised to the frame rate); the microphone
is a PulseAudio null sink whose monitor the engine records, into which the test plays clicks at
the same instants. What leaves: the virtual camera is a pyvirtualcam backend registered by the
test (it stamps each frame's arrival); the virtual microphone is recorded from its PulseAudio
source with the same stream-clock methods the pipeline uses. Both directions are timed on
``time.perf_counter``, the clock the engine uses.

The 40 ms bound is the issue's requirement (a tenth of the unsynchronised offset); a take in
which the sound server lost audio (an overflow or underrun, seen on loaded machines), in which
the camera thread was held up past a flash's instant (the flash is then shown late, not skipped), or
in which the pipeline dropped video frames (a busy worker or output: the dropped one may have been a
flash, which then never leaves), says
nothing about sync and is played again, up to MAX_TAKES times, unless it was in sync all the same;
a take without a disturbance is judged as it is. Hang guards only otherwise."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import pyvirtualcam

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.outputs.sinks import VirtualCameraSink
from mirage_desktop.voice import audio_io, mic
from mirage_desktop.voice.pipeline import StreamClock

pytestmark = [pytest.mark.audio, pytest.mark.virtual_mic]

SR = 48000
HANG_GUARD_S = 120.0
MAX_TAKES = 4
FLASHES = 6
GAP_S = 0.7  # between flashes
LEAD_S = 0.6  # silence before the first click (the source learns the instants meanwhile)
TOLERANCE_S = 0.040
LATE_FLASH_S = 0.005  # a flash shown later than this after its instant disturbs the take
W, H = 320, 240


class FlashSource:
    """A camera that shows white at the given instants and dark grey otherwise, at ``fps``."""

    kind = "camera"
    name = "flash camera"

    def __init__(self, fps=30.0):
        self.fps = fps
        self.size = (W, H)
        self.flashes: list[float] = []  # perf_counter instants, set by the test
        self.late = 0  # flashes shown more than LATE_FLASH_S after their instant
        self.lock = threading.Lock()
        self._next = time.perf_counter()
        self._dark = np.full((H, W, 3), 30, np.uint8)
        self._white = np.full((H, W, 3), 255, np.uint8)

    def read(self):
        with self.lock:  # a flash whose instant has passed is shown now (and counted late), never skipped
            pending = sorted(self.flashes)
        nxt = self._next
        flash = pending[0] if pending and pending[0] <= nxt else None
        due = flash if flash is not None else nxt
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self._next = max(nxt + 1.0 / self.fps, time.perf_counter() - 0.5) if flash is None else nxt
        if flash is not None:
            with self.lock:
                self.flashes.remove(flash)
                self.late += time.perf_counter() - flash > LATE_FLASH_S  # the camera thread was held up
            return self._white.copy()
        return self._dark.copy()

    def close(self):
        pass


class StampingCamera:
    """A pyvirtualcam backend: what a call app would receive, with arrival times."""

    arrivals: list = []  # (perf_counter, mean brightness)

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        pass

    def send(self, frame):
        StampingCamera.arrivals.append((time.perf_counter(), float(frame.mean())))

    def close(self):
        pass

    def device(self):
        return "stamping-cam"

    def native_fourcc(self):
        return None


class Stream:
    """An input (recording) or output (playing) PulseAudio stream with a perf_counter clock for its
    samples. Recording: the pipeline's own StreamClock, as the pipeline uses it (the earliest,
    least late callback is when its last frame was captured: the reported buffer latency is not
    subtracted; reset when the server dropped recorded audio, so later samples are not timed early).
    Playing: the earliest callback estimate plus the stream's reported latency (a player that
    underran plays its later clicks late: that take is counted as disturbed).
    """

    def __init__(self, dev, signal=None):
        self.signal, self.pos = signal, 0
        self.parts, self.n, self.t0, self.status = [], 0, None, 0
        self.clock, self.bases = StreamClock(SR), []  # recording: (frames so far, clock base) per callback
        self.cond = threading.Condition()
        self.stream = audio_io.open_stream(dev, SR, 480, self._cb, channels=1)

    def _cb(self, *args):
        now = time.perf_counter()
        lat = float(self.stream.latency)
        with self.cond:
            self.status += bool(args[-1])
            if self.signal is None:  # recording: frame n was captured at bases[k] + n / SR
                indata, frames = args[0], args[1]
                self.parts.append(indata[:, 0].copy())
                self.n += frames
                self.clock.update(now, self.n)  # as the pipeline's: no buffer latency; resets after a drop
                self.bases.append((self.n, self.clock.base))
                self.cond.notify_all()
                return
            else:  # playing: frame n reaches the device at t0 + n / SR
                outdata, frames = args[0], args[1]
                chunk = self.signal[self.pos:self.pos + frames]
                outdata[:] = 0
                outdata[:chunk.size, 0] = chunk
                t0 = now + lat - self.pos / SR
                self.pos += frames
                self.n = self.pos
                if self.pos <= SR // 10:  # the device buffer's first fill comes early: not on time
                    return
                self.t0 = t0 if self.t0 is None else min(self.t0, t0)
                self.cond.notify_all()

    def time_of(self, i):
        """When recorded sample ``i`` was captured: the clock as it stood 0.1 s of audio later (a
        backlog delivered at once has come down to its on-time value by then)."""
        with self.cond:
            k = min(np.searchsorted([n for n, _ in self.bases], i + SR // 10), len(self.bases) - 1)
            return self.bases[k][1] + i / SR

    def wait_samples(self, n):
        with self.cond:
            assert self.cond.wait_for(lambda: self.n >= n, HANG_GUARD_S), f"stream stalled at {self.n} samples"

    def audio(self):
        with self.cond:
            return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)

    def close(self):
        self.stream.stop()
        self.stream.close()


def _clicks(n_total):
    """Silence with a 20 ms 1 kHz burst at LEAD_S + k * GAP_S (a click that survives a vocoder)."""
    x = np.zeros(n_total, np.float32)
    t = np.arange(int(0.02 * SR)) / SR
    burst = (0.6 * np.sin(2 * np.pi * 1000 * t) * np.hanning(t.size)).astype(np.float32)
    at = [int((LEAD_S + k * GAP_S) * SR) for k in range(FLASHES)]
    for a in at:
        x[a:a + burst.size] = burst
    return x, at


def _onsets(y, thresh, min_gap_s=0.3):
    env = np.convolve(np.abs(y), np.ones(48) / 48, mode="same")
    out, last = [], -10 * SR
    for i in np.flatnonzero(env > thresh):
        if i - last > min_gap_s * SR:
            out.append(int(i))
        last = i if i - last > min_gap_s * SR else last
    return out


def _flash_arrivals(arrivals, since):
    out, lit = [], False
    for t, mean in arrivals:
        if t < since:
            continue
        if mean > 150 and not lit:
            out.append(t)
        lit = mean > 150
    return out


def _in_sync(instants, flashes, clicks) -> bool:
    return len(flashes) == len(clicks) == FLASHES and all(
        f > t and c > t and abs(f - c) <= TOLERANCE_S for f, c, t in zip(flashes, clicks, instants))


@pytest.fixture
def devices(pulse, null_sink):
    st = mic.setup()
    assert st["ready"]
    null_sink("mirage_lipsync_in")
    yield
    mic.remove()


def _dropped_frames(metrics) -> dict[str, int]:
    """The pipeline's video frame drops so far, by cause (a drop may have been a flash's frame)."""
    return {k: v for k, v in metrics.snapshot()["counters"].items() if k.startswith("dropped.")}


def _take(engine, source, metrics):
    """One take: clicks into the microphone, flashes on the camera at the same instants. Returns
    (pairs of (video, audio) arrival times, what was lost on the way)."""
    rec = Stream(audio_io.resolve_device("Mirage Microphone", "input"))
    sig, at = _clicks(int((LEAD_S + FLASHES * GAP_S + 1.0) * SR))
    player = Stream(audio_io.resolve_device("mirage_lipsync_in", "output"), sig)
    watched = ("voice.underruns", "voice.output_status", "voice.input_status")
    before = {k: metrics.counter(k) for k in watched}
    dropped_before = _dropped_frames(metrics)
    rec.stream.start()
    rec.wait_samples(SR // 10)
    rec_from = rec.n
    StampingCamera.arrivals.clear()
    player.stream.start()
    player.wait_samples(SR // 5)  # its clock is known: the instants of the clicks are too
    instants = [player.t0 + a / SR for a in at]
    with source.lock:
        source.flashes = list(instants)
        source.late = 0
    t_start = time.perf_counter()
    player.wait_samples(sig.size)
    rec.wait_samples(rec_from + int((LEAD_S + FLASHES * GAP_S + 0.9) * SR))
    player.close()
    rec.close()
    y = rec.audio()
    clicks = [rec.time_of(i) for i in _onsets(y, 0.05) if i >= rec_from]
    flashes = _flash_arrivals(list(StampingCamera.arrivals), t_start)
    lost = {k: metrics.counter(k) - v for k, v in before.items() if metrics.counter(k) != v}
    dropped = {k: n - dropped_before.get(k, 0) for k, n in _dropped_frames(metrics).items()
               if n != dropped_before.get(k, 0)}
    lost.update({"video frames dropped": dropped} if dropped else {})
    lost.update({"recorder": rec.status} if rec.status else {})
    lost.update({"player": player.status} if player.status else {})
    lost.update({"camera late": source.late} if source.late else {})
    return instants, flashes, clicks, lost


@pytest.mark.parametrize("mode", ["voice changer", "lip-sync microphone"])
def test_every_flash_and_its_click_leave_within_40_ms(devices, mode):
    pyvirtualcam.register_backend("stamping-cam", StampingCamera)
    convert = mode == "voice changer"
    s = Settings(enable_voice=convert, lipsync_mic=True, voice_input="mirage_lipsync_in.monitor",
                 voice_output="Mirage Microphone", voice_samplerate=SR, enable_ai_mark=False,
                 adapt_video=False)
    engine = Engine(s)
    engine.load_models()  # none here: the video passes through the same stages and the A/V hold
    source = FlashSource()
    engine.start(source, [VirtualCameraSink(backend="stamping-cam", width=W, height=H, fps=30)])
    m = engine.metrics
    takes = []
    try:
        assert engine.voice_mode == ("convert" if convert else "lipsync"), engine.status().problems
        assert m.wait_for("voice.chunks", 20, HANG_GUARD_S)  # the voice path runs and has measured itself
        for _ in range(MAX_TAKES):
            instants, flashes, clicks, lost = _take(engine, source, m)
            takes.append((instants, flashes, clicks, lost))
            if not lost or _in_sync(instants, flashes, clicks):
                break  # judged: an undisturbed take, or one in sync despite a disturbance
        snap = engine.snapshot()
    finally:
        engine.stop()
    for i, (inst, fl, cl, lost) in enumerate(takes, 1):
        d = [f"{(f - c) * 1000:+.0f}" for f, c in zip(fl, cl)]
        lat = [f"{(c - t) * 1000:.0f}" for c, t in zip(cl, inst)]
        print(f"\n{mode} take {i}: flash - click (ms) {d}; click latency (ms) {lat}; lost: {lost or 'nothing'}")
    off = snap["stages"].get("av.offset_ms", {})
    print(f"{mode}: av.offset_ms P50 {off.get('p50')}, P95 {off.get('p95')}; "
          f"voice e2e P50 {snap['stages'].get('voice.latency_e2e', {}).get('p50')}")
    instants, flashes, clicks, lost = takes[-1]
    assert not lost or _in_sync(instants, flashes, clicks), \
        f"every take lost audio on the way and was out of sync: {[t[3] for t in takes]}"
    assert len(flashes) == len(clicks) == FLASHES, (len(flashes), len(clicks))
    for f, c, t in zip(flashes, clicks, instants):
        assert f > t and c > t  # causality: nothing leaves before it happened
        assert abs(f - c) <= TOLERANCE_S, f"flash {f - t:.3f} s and click {c - t:.3f} s after the instant"


def test_voice_modes_switch_live_and_the_clock_follows(devices):
    s = Settings(lipsync_mic=True, voice_input="mirage_lipsync_in.monitor", voice_samplerate=SR)
    engine = Engine(s)  # no voice output named: the Mirage Microphone is found and used
    engine.load_models()
    pyvirtualcam.register_backend("stamping-cam", StampingCamera)
    engine.start(FlashSource(), [VirtualCameraSink(backend="stamping-cam", width=W, height=H, fps=30)])
    p = engine.pipeline
    try:
        assert engine.voice_mode == "lipsync", engine.status().problems
        assert engine.voice.output_dev.pulse_name == "mirage_mic_sink"
        assert p.audio_latency is not None and p.on_video_latency is not None
        engine.set_option("enable_voice", True)  # the voice changer takes over the virtual microphone
        assert engine.voice_mode == "convert" and engine.voice.mode == "voice"
        assert p.audio_latency is not None and p.on_video_latency is None
        engine.set_option("enable_voice", False)
        assert engine.voice_mode == "lipsync"
        engine.set_option("lipsync_mic", False)  # the microphone is left alone
        assert engine.voice_mode is None and engine.voice is None and p.audio_latency is None
    finally:
        engine.stop()
