"""End to end through real PulseAudio: play into a null sink, convert, record "Mirage Microphone".

The test waits for the audio it needs to have been recorded (counted in samples, not seconds of
waiting), so a slow machine only makes it take longer. On a loaded machine the sound server may
lose some of the converted audio (a late device callback, output the pipeline drops to keep the
latency down): the pitch is measured on the stretches that arrived whole, and a take with too
little of those is played again. Latencies are measured and printed; only what holds on any
machine is asserted (the output cannot come before its input)."""

import threading
import time

import numpy as np
import pytest

from mirage_desktop.config import Settings
from mirage_desktop.metrics import Metrics
from mirage_desktop.voice import audio_io, mic
from mirage_desktop.voice.f0 import harmonic_signal, world_f0
from mirage_desktop.voice.pipeline import VoicePipeline

pytestmark = pytest.mark.audio

SR = 48000
HANG_GUARD_S = 120.0  # only stops a broken build from hanging the suite; nothing asserts on time
MAX_TAKES = 8  # likewise: a take the machine disturbed is played again, this many times at most


@pytest.fixture
def mirage_mic(pulse):
    st = mic.setup()
    assert st["ready"] and mic.setup()["modules"] == st["modules"]  # idempotent
    yield st
    assert mic.remove()["modules"] == []


def test_mic_setup_lists_a_microphone(mirage_mic):
    sources = audio_io.pulse_devices("input")
    assert any(p["name"] == "mirage_mic" and p["description"] == "Mirage Microphone" for p in sources)
    out = audio_io.resolve_device("Mirage Microphone", "output")
    assert out.pulse_name == "mirage_mic_sink"
    assert audio_io.resolve_device("Mirage Microphone", "input").pulse_name == "mirage_mic"


class _Player:
    """Plays ``signal`` into a device and stamps when sample 0 reaches it (perf_counter)."""

    def __init__(self, dev, signal):
        self.sig, self.pos, self.t0 = signal, 0, None
        self.stream = audio_io.open_stream(dev, SR, 480, self._cb, channels=1)

    def _cb(self, outdata, frames, time_info, status):
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now + float(self.stream.latency)
        chunk = self.sig[self.pos:self.pos + frames]
        outdata[:] = 0
        outdata[:chunk.size, 0] = chunk
        self.pos += frames


class _Recorder:
    def __init__(self, dev):
        self.parts, self.t0, self.n = [], None, 0
        self.overflows = 0  # callbacks that said input was lost: sample positions no longer map to time
        self.cond = threading.Condition()
        self.stream = audio_io.open_stream(dev, SR, 480, self._cb, channels=1)

    def _cb(self, indata, frames, time_info, status):
        now = time.perf_counter()
        with self.cond:
            self.overflows += bool(status)
            self.parts.append(indata[:, 0].copy())
            self.n += frames
            # capture time of the first recorded sample as this callback tells it; callbacks are
            # never early but often late (more so under load), so the earliest estimate is kept
            t0 = now - float(self.stream.latency) - self.n / SR
            self.t0 = t0 if self.t0 is None else min(self.t0, t0)
            self.cond.notify_all()

    def audio(self):
        with self.cond:
            return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)

    def wait_until(self, pred, what, start=0, max_audio_s=60.0):
        """Block until ``pred(audio recorded since sample start)`` holds, checked after every 0.1 s
        of new audio (off the audio thread). Gives up after ``max_audio_s`` of audio (a hang guard)."""
        seen = start
        while True:
            with self.cond:
                ok = self.cond.wait_for(lambda: self.n >= seen + SR // 10, HANG_GUARD_S)
                assert ok, f"the recording of {what} stopped after {self.n / SR:.1f} s of audio"
                seen = self.n
            y = self.audio()[start:]
            if pred(y):
                return y
            assert seen - start < max_audio_s * SR, f"{what}: not there after {max_audio_s:.0f} s of audio"


def _onset(x, sr, thresh):
    env = np.convolve(np.abs(x), np.ones(48) / 48, mode="same")
    idx = np.flatnonzero(env > thresh)
    return idx[0] / sr if idx.size else None


def _whole_stretches_f0(seg, min_s=0.14, edge_s=0.02):
    """F0 (Hz) of ``seg`` measured only where it arrived whole: stretches of at least ``min_s``
    with no 10 ms dropout, less ``edge_s`` at each end. Returns (median F0, voiced seconds)."""
    win = SR // 100
    n = seg.size // win
    loud = np.abs(seg[:n * win]).reshape(n, win).max(axis=1) >= 0.01
    voiced, i = [], 0
    while i < n:
        j = i
        while j < n and loud[j]:
            j += 1
        if (j - i) * win >= min_s * SR:
            part = seg[i * win + int(edge_s * SR): j * win - int(edge_s * SR)]
            f0, _ = world_f0(part.astype(np.float64), method="harvest", sr=SR, frame_period_ms=5.0)
            voiced.append(f0[f0 > 0])
        i = j + 1
    v = np.concatenate(voiced) if voiced else np.zeros(0)
    return (float(np.median(v)) if v.size else 0.0), v.size * 0.005


def test_end_to_end_pitch_and_latency(mirage_mic, null_sink):
    null_sink("mirage_test_in")
    m = Metrics()
    settings = Settings(enable_voice=True, voice_pitch=4.0, voice_formant=1.0,
                        voice_input="mirage_test_in.monitor", voice_output="Mirage Microphone",
                        voice_samplerate=SR)
    pipe = VoicePipeline(settings, m)
    assert pipe.start(), pipe.status()["error"]
    assert pipe.output_dev.pulse_name == "mirage_mic_sink"
    block_s = pipe.status()["block_ms"] / 1000.0  # the start block (automatic: the smallest WORLD keeps up with)
    lead, tone_s, f0 = 0.6, 1.6, 150.0
    signal = np.concatenate([np.zeros(int(lead * SR)), harmonic_signal(f0, tone_s, sr=SR),
                             np.zeros(int(1.2 * SR))]).astype(np.float32)
    rec = _Recorder(audio_io.resolve_device("Mirage Microphone", "input"))
    ref = _Recorder(audio_io.resolve_device("mirage_test_in.monitor", "input"))  # what went in
    want = f0 * 2 ** (4 / 12)

    def converted_tone_is_in(y):  # its onset, and enough after it for the tone to have ended
        t = _onset(y, SR, 0.02)
        return t is not None and y.size >= int((t + tone_s + 0.3) * SR)

    takes = []  # (output F0, seconds it was measured on, onset-to-onset latency s, counters)
    try:
        rec.stream.start()
        ref.stream.start()
        for _ in range(MAX_TAKES):
            rec_from, ref_from = rec.n, ref.n  # this take's audio starts here in each recording
            overflows = rec.overflows + ref.overflows
            before = dict(m.snapshot()["counters"])
            player = _Player(audio_io.resolve_device("mirage_test_in", "output"), signal)
            try:
                player.stream.start()
                x = ref.wait_until(lambda y: _onset(y, SR, 0.02) is not None, "the input tone", ref_from)
                y = rec.wait_until(converted_tone_is_in, "the converted tone at the Mirage Microphone", rec_from)
            finally:
                player.stream.stop()
                player.stream.close()
            t_on, t_ref = _onset(y, SR, 0.02), _onset(x, SR, 0.02)
            got, voiced_s = _whole_stretches_f0(y[int((t_on + 0.3) * SR): int((t_on + tone_s - 0.3) * SR)])
            # both recorded the same way, so their capture-side delays cancel out
            external = (rec.t0 + rec_from / SR + t_on) - (ref.t0 + ref_from / SR + t_ref)
            if rec.overflows + ref.overflows > overflows:
                external = None  # a recording lost input: its timing says nothing this take
            lost = {k.split(".", 1)[1]: v - before.get(k, 0) for k, v in m.snapshot()["counters"].items()
                    if k in ("voice.underruns", "voice.output_status", "voice.dropped_output_samples",
                             "voice.dropped_input_blocks") and v != before.get(k, 0)}
            takes.append((got, voiced_s, external, lost))
            if voiced_s >= 0.3:  # enough of the tone arrived whole to tell its pitch
                break
        status = pipe.status()
    finally:
        for s in (rec.stream, ref.stream):
            s.stop()
            s.close()
        pipe.stop()
    for i, (g, v, e, lost) in enumerate(takes, 1):
        print(f"\ntake {i}: output F0 {g:.1f} Hz over {v:.2f} s of whole audio, onset-to-onset "
              f"{'(not timed: a recording lost input)' if e is None else f'{e * 1000:.0f} ms'}, "
              f"lost on the way: {lost or 'nothing'}")
    print(f"E2E through PulseAudio null sinks: wanted F0 {want:.1f} Hz; "
          f"algorithmic latency {status['algorithmic_latency_ms']:.0f} ms; "
          f"pipeline-measured latency P50 {status['measured_latency_ms']:.0f} ms "
          f"(P95 {status['measured_latency_p95_ms']:.0f}); "
          f"chunks {status['chunks']}, underruns {m.counter('voice.underruns')}, device underflows "
          f"{m.counter('voice.output_status')}, output margin {status['output_margin_ms']:.0f} ms, "
          f"longest conversion {status['proc_ref_ms']:.0f} ms")
    assert status["running"] and status["error"] is None, status
    assert y.size > SR
    got, voiced_s, _, _ = takes[-1]
    assert voiced_s >= 0.3, f"no take in {MAX_TAKES} arrived whole enough to measure: {takes}"
    assert abs(got - want) / want < 0.02, (got, want)
    # The product brief's "< 250 ms end to end" is not asserted here: how long it takes depends on
    # the machine (docs/voice.md has the figures, `python -m mirage_desktop.voice.bench --e2e`
    # measures them). Only causality is asserted: the converted tone cannot reach the microphone
    # before its input did plus one block (a block's first sample waits for the whole block).
    block_s = min(block_s, status["block_ms"] / 1000.0)  # the smallest it ran at
    assert status["measured_latency_ms"] is not None and status["measured_latency_ms"] > block_s * 1000.0
    assert all(e > block_s for _, _, e, _ in takes if e is not None), takes
    assert m.counter("voice.chunks") > 5  # the tone alone spans eight blocks


def test_live_options(pulse, null_sink):
    from mirage_desktop.errors import MirageError
    from mirage_desktop.voice.pipeline import VoicePipeline

    null_sink("mirage_test_a")
    null_sink("mirage_test_b")
    s = Settings(enable_voice=True, voice_input="mirage_test_a.monitor", voice_output="mirage_test_b")
    pipe = VoicePipeline(s, Metrics())
    assert pipe.start(), pipe.status()["error"]
    try:
        assert pipe.status()["running"] and pipe.status()["converter"] == "world"
        pipe.set_option("pitch", -3)
        pipe.set_option("formant", 0.9)
        assert pipe.status()["options"]["pitch"] == -3.0 and pipe.status()["options"]["formant"] == 0.9
        pipe.set_option("preset", "chipmunk")
        assert pipe.status()["options"]["preset"] == "chipmunk"
        pipe.set_option("enabled", False)
        st = pipe.status()
        assert st["converter"] == "passthrough" and st["passthrough_reason"].startswith("bypass")
        pipe.set_option("enabled", True)
        assert pipe.status()["passthrough_reason"] is None
        with pytest.raises(MirageError):
            pipe.set_option("pitch", 99)
        with pytest.raises(MirageError):
            pipe.set_option("volume", 3)
        keys = {"running", "converter", "passthrough_reason", "algorithmic_latency_ms", "measured_latency_ms"}
        assert keys <= set(pipe.status())
    finally:
        pipe.stop()
    assert pipe.status()["running"] is False


def test_lipsync_target_latency_is_real_at_the_devices(pulse):
    """Lip-sync mode through real PulseAudio null sinks: a target above its natural latency delays
    the audio at the output device to the target (measured onset to onset on both monitors, so the
    sound server's own buffering is included)."""
    from mirage_desktop.voice.bench import e2e_run
    from mirage_desktop.voice.pipeline import FILL_TOLERANCE_S, LIPSYNC_BLOCK_MS

    def run(target_s=None):  # a run whose recordings lost input around most bursts is run again
        for _ in range(3):
            r = e2e_run(LIPSYNC_BLOCK_MS, "passthrough", bursts=8, mode="lipsync", target_s=target_s,
                        sinks="mirage_test_lat", timeout_s=HANG_GUARD_S)
            assert r["complete"], r
            if r["onsets"] >= 4:
                return r
        raise AssertionError(f"fewer than 4 bursts timed in 3 runs: {r}")

    natural = run()
    assert natural["breakdown"]["block"] == LIPSYNC_BLOCK_MS
    target = natural["e2e_p50"] / 1000.0 + 0.1  # whatever this machine's natural latency, 100 ms more
    delayed = run(target)
    print(f"\nlip-sync mode: natural onset-to-onset P50 {natural['onset_p50']:.0f} ms (pipeline-measured "
          f"{natural['e2e_p50']:.0f}); target {target * 1000:.0f} ms: onset-to-onset P50 {delayed['onset_p50']:.0f} "
          f"ms (pipeline-measured {delayed['e2e_p50']:.0f}, latency_s {delayed['latency_s'] * 1000:.0f}); "
          f"inserted {delayed['inserted_ms']:.0f} ms of silence after the start")
    assert delayed["latency_s"] >= target - FILL_TOLERANCE_S - 0.005
    # the delay is real at the devices: measured onset to onset, independently of the pipeline's own
    # clocks, the bursts arrive no earlier than the target less 40 ms (the two measurements differ by
    # some 10-20 ms on a loaded machine; a load only makes the latency longer, never shorter)
    assert delayed["onset_p50"] >= (target - 0.04) * 1000.0, (natural, delayed)
