import numpy as np
import pytest

from mirage_desktop.errors import MirageError
from mirage_desktop.metrics import Metrics
from mirage_desktop.voice.converters import PRESETS, PassThrough, WorldConverter, check_converter, make_converter
from mirage_desktop.voice.engine import VoiceEngine
from mirage_desktop.voice.f0 import harmonic_signal, median_f0


@pytest.mark.parametrize("semitones", [-5.0, 4.0, 7.0])
def test_world_pitch_shift_within_2_percent(semitones):
    f0 = 150.0
    x = harmonic_signal(f0, 2.0)
    y = VoiceEngine(WorldConverter(pitch=semitones)).process(x)
    measured = median_f0(y[3200:-3200])
    want = f0 * 2 ** (semitones / 12)
    assert abs(measured - want) / want < 0.02, (measured, want)


def _centroid(x, sr=16000):
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    freqs = np.fft.rfftfreq(x.size, 1 / sr)
    return float((spec * freqs).sum() / spec.sum())


def test_formant_shift_moves_the_envelope_not_the_pitch():
    x = harmonic_signal(140.0, 1.5, n_harmonics=40)
    plain = VoiceEngine(WorldConverter()).process(x)
    up = VoiceEngine(WorldConverter(formant=1.25)).process(x)
    seg = slice(4000, 20000)
    assert _centroid(up[seg]) > 1.1 * _centroid(plain[seg])
    assert abs(median_f0(up[seg]) - 140.0) / 140.0 < 0.02


def test_no_discontinuity_at_chunk_boundaries():
    x = harmonic_signal(150.0, 3.0, vibrato=0.02)
    eng = VoiceEngine(WorldConverter(pitch=3.0), adapt=False)
    y = eng.process(x, flush=False)
    d = np.abs(np.diff(y))
    block = eng.block
    bounds = np.arange(block, y.size - 1, block)
    near = np.concatenate([d[b - 3:b + 3] for b in bounds[1:]])
    inside = d[3 * block:-block]
    # the steepest step at a boundary is no steeper than the signal's own steps
    assert near.max() <= 1.05 * inside.max()
    assert np.percentile(near, 99) <= 1.5 * np.percentile(inside, 99)


def test_silence_passes_through_without_converting():
    m = Metrics()

    class Counting(PassThrough):
        name = "counting"
        calls = 0

        def convert(self, window, tail, timings):
            Counting.calls += 1
            return super().convert(window, tail, timings)

    eng = VoiceEngine(Counting(), m, silence_db=-50.0)
    quiet = (1e-4 * np.random.default_rng(0).standard_normal(16000 * 2)).astype(np.float32)  # -80 dBFS
    out = eng.process(quiet, flush=False)
    assert Counting.calls == 0
    assert m.counter("voice.silent_chunks") == m.counter("voice.chunks") > 0
    assert np.max(np.abs(out)) < 1e-3


def test_presets_and_option_validation():
    c = WorldConverter()
    for name in PRESETS:
        c.set_option("preset", name)
        assert c.options()["preset"] == name
    with pytest.raises(MirageError, match="unknown voice preset"):
        c.set_option("preset", "dalek")
    with pytest.raises(MirageError, match="out of range"):
        c.set_option("pitch", 40)
    x = harmonic_signal(150.0, 1.5)
    c.set_option("preset", "robot")
    y = VoiceEngine(c).process(x)
    assert abs(median_f0(y[3200:-3200]) - 110.0) / 110.0 < 0.03
    check_converter(make_converter("passthrough"))


def test_real_speech_pitch_shift(speech):
    from mirage_desktop.voice.f0 import world_f0

    y = VoiceEngine(WorldConverter(pitch=4.0, formant=1.1)).process(speech)
    f_in, _ = world_f0(speech, "harvest", frame_period_ms=5.0)
    f_out, _ = world_f0(y, "harvest", frame_period_ms=5.0)
    ratio = np.median(f_out[f_out > 0]) / np.median(f_in[f_in > 0])
    assert abs(ratio - 2 ** (4 / 12)) / 2 ** (4 / 12) < 0.05, ratio
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0


@pytest.mark.parametrize("f0", [150.0, 100.0])
def test_chunk_joins_do_not_dip_in_level(f0):
    """The (short) default crossfade + SOLA search line chunks up well enough that the level does
    not sag at the joins (a misaligned crossfade of two voiced signals partly cancels)."""
    x = harmonic_signal(f0, 3.0, vibrato=0.02)
    eng = VoiceEngine(WorldConverter(pitch=3.0), adapt=False)
    y = eng.process(x, flush=False).astype(np.float64)
    w, block, xf = 160, eng.block, eng.sola.crossfade
    rms = np.sqrt(np.convolve(y * y, np.ones(w) / w, mode="same"))
    bounds = np.arange(block, y.size - 1, block)[1:-1]
    at_joins = min(rms[b - w // 2: b + xf + w // 2].min() for b in bounds)
    mid_block = min(rms[b + block // 2 - 300: b + block // 2 + 300].min() for b in bounds)
    assert at_joins >= 0.9 * mid_block, (at_joins, mid_block)
