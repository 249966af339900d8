import numpy as np

from mirage_desktop.metrics import Metrics
from mirage_desktop.voice.converters import PassThrough, WorldConverter
from mirage_desktop.voice.engine import RealtimeController, VoiceEngine
from mirage_desktop.voice.f0 import harmonic_signal


def test_controller_grows_shrinks_and_falls_back():
    c = RealtimeController(block=3072, min_block=1536, max_block=3072 + 2 * 512)
    acts = [c.update(0.78) for _ in range(40)]
    assert acts[-1] == "grow" and c.block == 3584 and acts[:-1] == [None] * 39
    acts = [c.update(0.78) for _ in range(40)]
    assert acts[-1] == "grow" and c.block == 4096  # now at the maximum
    acts = [c.update(0.78) for _ in range(200)]  # 0.75..0.80 at the maximum: keeps up, no action
    assert acts == [None] * 200
    acts = [c.update(0.9) for _ in range(7)]  # at the maximum, the mean over 40 passes 0.80 on the 7th
    assert acts == [None] * 6 + ["fallback"] and "at the largest block" in c.fallback_cause
    c2 = RealtimeController(block=3072, min_block=1536, max_block=8000)
    acts = [c2.update(0.3) for _ in range(120)]
    assert acts[-1] == "shrink" and c2.block == 2560
    assert c2.accept_ratio == 1.0
    c3 = RealtimeController(block=3072, min_block=1536, max_block=8000)
    acts = [c3.update(1.5) for _ in range(40)]  # hopeless: growing cannot help
    assert acts[-1] == "fallback" and "40 consecutive" in c3.fallback_cause
    c4 = RealtimeController(block=3072, min_block=1536, max_block=8000)
    assert [c4.update(r) for r in [0.85] * 39 + [0.5] + [0.85] * 39].count("fallback") == 0


def test_controller_checks_consecutive_fallback_before_growing():
    # brief: above 0.80 for 40 consecutive chunks -> fall back; it must not first grow to the maximum
    c = RealtimeController(block=3072, min_block=1536, max_block=7680)
    acts = [c.update(0.85) for _ in range(40)]
    assert acts == [None] * 39 + ["fallback"] and c.block == 3072
    assert c.fallback_cause == "runtime/real > 0.8 for 40 consecutive chunks"


def test_controller_slower_than_real_time_on_average_grows_then_falls_back():
    # alternating 0.4 / 1.7: mean 1.05 (input is dropped) but never 40 consecutive chunks > 0.80
    c = RealtimeController(block=3072, min_block=1536, max_block=3072 + 2 * 512)
    acts = [c.update(0.4 if i % 2 else 1.7) for i in range(120)]
    events = [(i + 1, a) for i, a in enumerate(acts) if a]
    assert events == [(40, "grow"), (80, "grow"), (120, "fallback")]
    assert c.block == 4096
    assert c.fallback_cause == "mean runtime/real 1.05 > 0.8 over the last 40 chunks at the largest block"
    # the odd fast chunk does not hide it either: 39 x 0.9 + 1 x 0.7 at the maximum
    c2 = RealtimeController(block=4096, min_block=1536, max_block=4096)
    acts = [c2.update(0.7 if i % 40 == 39 else 0.9) for i in range(40)]
    assert acts[-1] == "fallback" and acts[:-1] == [None] * 39
    # without adaptation the block cannot grow: the mean rule applies at once
    c3 = RealtimeController(block=3072, min_block=1536, max_block=8000, adapt=False)
    acts = [c3.update(0.4 if i % 2 else 1.7) for i in range(40)]
    assert acts[-1] == "fallback" and "adaptation off" in c3.fallback_cause and c3.block == 3072


class _StepClock:
    """A fake clock: each call advances by ``dt``; the engine reads it 4 times per chunk."""

    def __init__(self, dt):
        self.t, self.dt = 0.0, dt

    def __call__(self):
        self.t += self.dt
        return self.t


def test_engine_falls_back_to_passthrough_when_too_slow_and_says_so():
    m = Metrics()
    eng = VoiceEngine(WorldConverter(pitch=4), m, adapt=False, clock=_StepClock(0.192 * 0.9 / 3))
    x = harmonic_signal(150.0, 0.192 * 45)
    eng.process(x, flush=False)
    st = eng.status()
    assert st["converter"] == "passthrough"
    assert "too slow" in st["passthrough_reason"] and "40 consecutive" in st["passthrough_reason"]
    assert m.counter("voice.fallbacks") == 1
    assert m.snapshot()["gauges"]["voice.accept_ratio"] == 0.0
    eng.clear_fallback()
    assert eng.status()["converter"] == "world"


class _RatioClock:
    """A fake clock giving chunk k the ratio ``ratios(k)`` (elapsed = 3 clock steps per chunk)."""

    def __init__(self, ratios, block_s=0.192):
        self.t, self.calls, self.ratios, self.block_s = 0.0, 0, ratios, block_s

    def __call__(self):
        self.t += self.ratios(self.calls // 4) * self.block_s / 3
        self.calls += 1
        return self.t


def test_engine_falls_back_when_slower_than_real_time_on_average_and_says_so():
    m = Metrics()
    eng = VoiceEngine(WorldConverter(pitch=4), m, adapt=False,
                      clock=_RatioClock(lambda k: 0.4 if k % 2 else 1.7))
    eng.process(harmonic_signal(150.0, 0.192 * 45), flush=False)
    st = eng.status()
    assert st["converter"] == "passthrough" and m.counter("voice.fallbacks") == 1
    assert st["passthrough_reason"] == ("converter world too slow: mean runtime/real 1.05 > 0.8 over the last "
                                        "40 chunks (block adaptation off) at 192 ms")


def test_engine_metrics_and_raising_converter():
    m = Metrics()

    class Broken(PassThrough):
        name = "broken"

        def convert(self, window, tail, timings):
            raise RuntimeError("boom")

    eng = VoiceEngine(Broken(), m)
    y = eng.process(harmonic_signal(150.0, 1.0))
    assert np.all(np.isfinite(y)) and y.size > 0
    assert "broken failed: boom" in eng.status()["passthrough_reason"]
    assert m.counter("voice.converter_errors") == 1

    m2 = Metrics()
    eng2 = VoiceEngine(WorldConverter(pitch=2), m2)
    eng2.process(harmonic_signal(150.0, 1.0), flush=False)
    snap = m2.snapshot()
    for stage in ("voice.encode", "voice.f0", "voice.convert", "voice.post", "voice.chunk"):
        assert snap["stages"][stage]["count"] > 0
    assert snap["counters"]["voice.chunks"] == 5 and snap["gauges"]["voice.block_ms"] == 192.0
    assert eng2.algorithmic_latency_ms() == 192.0 + 16.0 + 8.0  # block + crossfade + SOLA search
    st = eng2.status()
    assert (st["crossfade_ms"], st["search_ms"], st["algorithmic_latency_ms"]) == (16.0, 8.0, 216.0)
