"""End to end through real PulseAudio: play into a null sink, convert, record "Mirage Microphone"."""

import threading
import time

import numpy as np
import pytest

from mirage_desktop.config import Settings
from mirage_desktop.metrics import Metrics
from mirage_desktop.voice import audio_io, mic
from mirage_desktop.voice.f0 import harmonic_signal, median_f0
from mirage_desktop.voice.pipeline import VoicePipeline

pytestmark = pytest.mark.audio

SR = 48000


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
        self.parts, self.t0 = [], None
        self.lock = threading.Lock()
        self.stream = audio_io.open_stream(dev, SR, 480, self._cb, channels=1)

    def _cb(self, indata, frames, time_info, status):
        now = time.perf_counter()
        with self.lock:
            if self.t0 is None:  # capture time of the first recorded sample
                self.t0 = now - float(self.stream.latency) - frames / SR
            self.parts.append(indata[:, 0].copy())

    def audio(self):
        with self.lock:
            return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)


def _onset(x, sr, thresh):
    env = np.convolve(np.abs(x), np.ones(48) / 48, mode="same")
    idx = np.flatnonzero(env > thresh)
    return idx[0] / sr if idx.size else None


def test_end_to_end_pitch_and_latency(mirage_mic, null_sink):
    null_sink("mirage_test_in")
    m = Metrics()
    settings = Settings(enable_voice=True, voice_pitch=4.0, voice_formant=1.0,
                        voice_input="mirage_test_in.monitor", voice_output="Mirage Microphone",
                        extra={"voice_samplerate": SR})
    pipe = VoicePipeline(settings, m)
    assert pipe.start(), pipe.status()["error"]
    assert pipe.output_dev.pulse_name == "mirage_mic_sink"
    lead, tone_s, f0 = 0.6, 1.6, 150.0
    signal = np.concatenate([np.zeros(int(lead * SR)), harmonic_signal(f0, tone_s, sr=SR),
                             np.zeros(int(1.2 * SR))]).astype(np.float32)
    rec = _Recorder(audio_io.resolve_device("Mirage Microphone", "input"))
    ref = _Recorder(audio_io.resolve_device("mirage_test_in.monitor", "input"))  # what went in
    player = _Player(audio_io.resolve_device("mirage_test_in", "output"), signal)
    try:
        rec.stream.start()
        ref.stream.start()
        player.stream.start()
        deadline = time.monotonic() + signal.size / SR + 3.0
        while player.pos < signal.size and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)
        status = pipe.status()
    finally:
        player.stream.stop(); player.stream.close()
        rec.stream.stop(); rec.stream.close()
        ref.stream.stop(); ref.stream.close()
        pipe.stop()
    assert status["running"] and status["error"] is None, status
    y = rec.audio()
    assert y.size > SR
    t_on = _onset(y, SR, 0.02)
    assert t_on is not None, "nothing arrived at the Mirage Microphone"
    seg = y[int((t_on + 0.3) * SR): int((t_on + tone_s - 0.3) * SR)]
    got = median_f0(seg, sr=SR)
    want = f0 * 2 ** (4 / 12)
    assert abs(got - want) / want < 0.02, (got, want)
    t_ref = _onset(ref.audio(), SR, 0.02)
    assert t_ref is not None
    # both recorded the same way, so their capture-side delays cancel out
    measured_external = (rec.t0 + t_on) - (ref.t0 + t_ref)
    print(f"\nE2E through PulseAudio null sinks: output F0 {got:.1f} Hz (wanted {want:.1f}); "
          f"algorithmic latency {status['algorithmic_latency_ms']:.0f} ms; "
          f"pipeline-measured latency P50 {status['measured_latency_ms']:.0f} ms "
          f"(P95 {status['measured_latency_p95_ms']:.0f}); onset-to-onset {measured_external * 1000:.0f} ms; "
          f"chunks {status['chunks']}, underruns {m.counter('voice.underruns')}, device underflows "
          f"{m.counter('voice.output_status')}, output margin {status['output_margin_ms']:.0f} ms, "
          f"longest conversion {status['proc_ref_ms']:.0f} ms")
    # The product brief's "< 250 ms end to end" is not asserted: with 192 ms blocks it cannot be met on
    # this path (192 block + 24 SOLA + ~40 device + 25-40 conversion + margin; see docs/voice.md).
    assert status["measured_latency_ms"] is not None and status["measured_latency_ms"] > 0
    assert 0.1 < measured_external < 1.5
    assert m.counter("voice.chunks") > 5


def test_live_options_and_run_helper(pulse, null_sink):
    from mirage_desktop.errors import MirageError
    from mirage_desktop.voice.pipeline import start_if_enabled

    null_sink("mirage_test_a")
    null_sink("mirage_test_b")
    assert start_if_enabled(Settings(enable_voice=False), Metrics()) is None
    s = Settings(enable_voice=True, voice_input="mirage_test_a.monitor", voice_output="mirage_test_b")
    pipe = start_if_enabled(s, Metrics())
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
