"""The latency API (latency_s, set_target_latency_s), the automatic start block, the lip-sync mode.

Scripted: fake devices whose callbacks the test calls itself on a scripted clock (the pipeline's
``time.perf_counter`` is replaced), the worker's loop body run in the test's thread
(``_process_input``), so every latency is exact and nothing depends on the machine's speed. At
16 kHz device rate the resamplers are the identity and pass-through output is the input sample for
sample, shifted: a burst that reaches the output unchanged was neither stretched nor cut."""

import types

import numpy as np
import pytest

from mirage_desktop.config import Settings
from mirage_desktop.errors import MirageError
from mirage_desktop.metrics import Metrics
from mirage_desktop.voice import audio_io, pipeline
from mirage_desktop.voice.engine import ACCEPT_BELOW, MIN_BLOCK_MS, RealtimeController, controller_blocks_ms
from mirage_desktop.voice.f0 import harmonic_signal
from mirage_desktop.voice.pipeline import FILL_TOLERANCE_S, SampleFifo, VoicePipeline

SR = 16000
DEV = 80  # 5 ms device callbacks
LAT = 0.01  # each fake stream's reported latency


class FakeStream:
    def __init__(self):
        self.active, self.latency = False, LAT

    def start(self):
        self.active = True

    def abort(self):
        self.active = False

    def close(self):
        pass


class ScriptedClock:
    def __init__(self):
        self.t = 100.0

    def perf_counter(self):
        return self.t


@pytest.fixture
def scripted(monkeypatch):
    """Fake devices, no worker thread, the pipeline's clock scripted; returns the clock."""
    clock = ScriptedClock()

    def resolve(spec, kind):
        return audio_io.ResolvedDevice(kind, 0, "Fake " + kind, float(SR), 1)

    monkeypatch.setattr(audio_io, "resolve_device", resolve)
    monkeypatch.setattr(audio_io, "open_stream", lambda *a, **k: FakeStream())
    monkeypatch.setattr(VoicePipeline, "_work", lambda self: None)
    monkeypatch.setattr(pipeline, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    return clock


def _start(mode="voice", **kw):
    s = Settings(enable_voice=True, voice_samplerate=SR, **kw)
    pipe = VoicePipeline(s, Metrics(), mode=mode)
    assert pipe.start(), pipe.error
    return pipe


class Driver:
    """Runs the scripted devices: every 5 ms one input callback (then the worker's loop body) and
    one output callback; keeps what was played."""

    def __init__(self, pipe, clock):
        self.pipe, self.clock, self.k = pipe, clock, 0
        self.played: list[np.ndarray] = []

    def run(self, signal: np.ndarray, between=None) -> None:
        """Feed ``signal`` (a multiple of 5 ms); ``between(sample)`` is called before each callback."""
        for i in range(0, signal.size, DEV):
            if between is not None:
                between(i)
            self.k += 1
            self.clock.t += DEV / SR
            chunk = signal[i:i + DEV].reshape(-1, 1).astype(np.float32)
            self.pipe._on_input(chunk, DEV, None, None)
            self.pipe._process_input(self.pipe._in_q.get_nowait())
            out = np.zeros((DEV, 1), dtype=np.float32)
            self.pipe._on_output(out, DEV, None, None)
            self.played.append(out[:, 0].copy())

    def starve(self, n: int) -> None:
        """``n`` callbacks of the output alone (the input stalls)."""
        for _ in range(n):
            self.clock.t += DEV / SR
            out = np.zeros((DEV, 1), dtype=np.float32)
            self.pipe._on_output(out, DEV, None, None)
            self.played.append(out[:, 0].copy())

    def output(self) -> np.ndarray:
        return np.concatenate(self.played)


def _bursts(n, on_s=0.3, off_s=0.4):
    tone = harmonic_signal(150.0, on_s, sr=SR).astype(np.float32)
    period = np.zeros(int((on_s + off_s) * SR), dtype=np.float32)
    period[:tone.size] = tone
    return np.tile(period, n), tone


def _find(out, tone, start=0):
    """Index of the next exact copy of ``tone`` in ``out`` from ``start`` (None if there is none)."""
    i = start
    while True:
        nz = np.flatnonzero(out[i:] != 0)
        if nz.size == 0:
            return None
        j = i + int(nz[0])
        if j + tone.size <= out.size and np.array_equal(out[j:j + tone.size], tone):
            return j
        i = j + 1


def _burst_latencies(out, tone, n, period):
    """(burst k's latency in s from input to output, as sample offsets) for each of n bursts, all of
    which must arrive as exact copies (neither stretched nor cut). The constant clock offsets of
    the scripted devices are the same for every burst and left out."""
    lat, at = [], 0
    for k in range(n):
        j = _find(out, tone, at)
        assert j is not None, f"burst {k} did not arrive unchanged"
        lat.append((j - k * period) / SR)
        at = j + tone.size
    return np.array(lat)


def test_target_latency_is_reached_in_silence_and_voiced_audio_is_never_touched(scripted):
    pipe = _start(mode="lipsync")
    drv = Driver(pipe, scripted)
    sig, tone = _bursts(12)
    period = int(0.7 * SR)
    m = pipe.metrics
    target, state = 0.2, {}

    def between(i):
        k, off = divmod(i, period)
        if k == 3 and off == int(0.1 * SR):  # in the middle of burst 3: nothing may change inside it
            state["natural"] = pipe.latency_s()
            state["inserted_before"] = m.counter("voice.inserted_output_samples")
            pipe.set_target_latency_s(target)
        if k == 3 and off == int(0.25 * SR):
            state["inserted_in_burst"] = m.counter("voice.inserted_output_samples") - state["inserted_before"]
        if k == 8 and off == int(0.1 * SR):
            state["at_target"] = pipe.latency_s()
            pipe.set_target_latency_s(None)

    drv.run(sig, between)
    lat = _burst_latencies(drv.output(), tone, 12, period)
    natural = state["natural"]
    assert natural is not None and natural < target - 0.05  # lip-sync mode is fast enough to be delayed
    assert state["inserted_in_burst"] == 0  # the target waits for the silence
    offset = natural - lat[0]  # measured latency vs the sample offset: the scripted devices' constant part
    # bursts 0..3 at the natural latency (burst 3 got its target in its middle and kept its latency)
    assert np.ptp(lat[:4]) < 1.5 * DEV / SR, lat
    # from burst 4 on (the first after a silence) the latency is the target, to within the tolerance
    reached = lat[4:9] + offset
    assert np.all(reached >= target - FILL_TOLERANCE_S - DEV / SR), (reached, target)
    assert np.all(reached <= target + FILL_TOLERANCE_S + 2 * DEV / SR), (reached, target)
    assert target - FILL_TOLERANCE_S - DEV / SR <= state["at_target"] <= target + FILL_TOLERANCE_S + 2 * DEV / SR
    assert m.counter("voice.inserted_output_samples") > 0
    assert m.gauge("voice.target_latency_ms") is None  # cleared
    # target removed in burst 8: the excess silence is cut again (slack rule), voiced audio untouched
    assert lat[-1] + offset < target - 0.05, lat
    assert m.counter("voice.trimmed_output_samples") > 0
    assert m.counter("voice.dropped_output_samples") == 0


def test_target_below_the_natural_latency_changes_nothing(scripted):
    pipe = _start(mode="lipsync")
    drv = Driver(pipe, scripted)
    sig, tone = _bursts(4)
    pipe.set_target_latency_s(0.001)
    drv.run(sig)
    lat = _burst_latencies(drv.output(), tone, 4, int(0.7 * SR))
    assert np.ptp(lat) < 1.5 * DEV / SR
    assert pipe.metrics.counter("voice.inserted_output_samples") == 0
    assert pipe.metrics.gauge("voice.target_latency_ms") == 1.0


def test_latency_estimate_before_and_after_measurement(scripted):
    assert VoicePipeline(Settings(enable_voice=True), Metrics()).latency_s() is None  # not running
    pipe = _start(voice_converter="passthrough")
    eng = pipe.engine
    # no measurement yet: block + SOLA + both devices' latencies + the output schedule (margin)
    parts = (eng.block + eng.sola.crossfade + eng.sola.search) / SR + 2 * LAT + pipe._margin_s
    assert pipe.latency_s() == pytest.approx(parts) and pipe.latency_s() == pipe.estimated_latency_s()
    pipe.set_target_latency_s(0.5)
    assert pipe.latency_s() == pytest.approx(0.5)  # the estimate is at least the target
    pipe.stop()
    assert pipe.latency_s() is None

    pipe = _start(mode="lipsync")
    est = pipe.latency_s()
    assert est == pytest.approx(pipeline.LIPSYNC_BLOCK_MS / 1000.0 + 2 * LAT + pipe._margin_s)
    drv = Driver(pipe, scripted)
    sig, tone = _bursts(3)
    drv.run(sig)
    measured = pipe.metrics.histogram("voice.latency_e2e").values()
    assert measured.size >= 10
    lat = pipe.latency_s()
    assert lat == pytest.approx(np.median(measured[-pipeline.LATENCY_WINDOW:]) / 1000.0)
    # what it measures is the latency the bursts really have: their sample offset plus the scripted
    # devices' constant part (the 5 ms callback phase + both reported latencies)
    sample_lat = _burst_latencies(drv.output(), tone, 3, int(0.7 * SR))
    assert np.allclose(sample_lat + DEV / SR + 2 * LAT, lat, atol=DEV / SR), (sample_lat, lat)
    # and the estimate made before any measurement was not far off
    assert abs(lat - est) <= pipe._margin_s + DEV / SR
    pipe.stop()
    assert pipe.latency_s() is None


def test_latency_is_a_median_one_late_marker_does_not_move_it(scripted):
    pipe = _start(mode="lipsync")
    drv = Driver(pipe, scripted)
    drv.run(_bursts(2)[0])
    lat = pipe.latency_s()
    with pipe._recent_lock:
        pipe._recent_lat.append(5000.0)  # as if one block had been measured 5 s late
    assert pipe.latency_s() == pytest.approx(lat, abs=0.002)


def test_margin_grows_at_an_underrun_and_shrinks_after_10_s_of_audio_without_one(scripted):
    pipe = _start(mode="lipsync")
    drv = Driver(pipe, scripted)
    drv.run(np.zeros(int(0.5 * SR), np.float32))
    assert pipe._margin_s == pipeline.MARGIN_START_S and pipe.metrics.counter("voice.underruns") == 0
    drv.starve(20)  # the input stalls for 100 ms: the output runs dry while playing
    assert pipe.metrics.counter("voice.underruns") == 1
    grown = pipeline.MARGIN_START_S + pipeline.MARGIN_STEP_S
    assert pipe._margin_s == pytest.approx(grown)
    drv.run(np.zeros(int(9.5 * SR), np.float32))  # 9.5 s of 20 ms blocks (475 of them): not yet
    assert pipe._margin_s == pytest.approx(grown)
    drv.run(np.zeros(int(1.0 * SR), np.float32))
    assert pipe._margin_s == pytest.approx(grown - pipeline.MARGIN_DECAY_S)
    assert pipe.metrics.counter("voice.underruns") == 1


def test_target_latency_is_checked(scripted):
    pipe = _start(mode="lipsync")
    for bad in (-0.1, float("nan"), "soon"):
        with pytest.raises(MirageError):
            pipe.set_target_latency_s(bad)
    assert pipe.target_latency_s() is None
    pipe.set_target_latency_s(30.0)  # far beyond what is worth waiting for: the longest wait
    assert pipe.target_latency_s() == pipeline.MAX_TARGET_S
    pipe.set_target_latency_s(0.12)
    assert pipe.target_latency_s() == 0.12 and pipe.status()["target_latency_ms"] == 120.0


def test_lipsync_mode_is_a_small_unconverted_block(scripted):
    pipe = _start(mode="lipsync", voice_converter="world", voice_pitch=4.0, voice_block_ms=192.0)
    st = pipe.status()
    assert st["mode"] == "lipsync" and st["converter"] == "passthrough"
    assert st["block_ms"] == pipeline.LIPSYNC_BLOCK_MS and st["crossfade_ms"] == 0 and st["search_ms"] == 0
    with pytest.raises(MirageError, match="lip-sync"):
        pipe.set_option("converter", "world")
    with pytest.raises(MirageError):
        VoicePipeline(Settings(), Metrics(), mode="karaoke")


def test_passthrough_converter_starts_at_a_small_block(scripted):
    pipe = _start(voice_converter="passthrough")
    assert pipe.status()["block_ms"] == pipeline.PASSTHROUGH_BLOCK_MS
    pipe.stop()
    pipe = _start(voice_converter="passthrough", voice_block_ms=96.0)  # a configured block is kept
    assert pipe.status()["block_ms"] == 96.0


class CostlyConverter:
    """A converter whose every conversion takes ``cost_s`` on the scripted clock."""

    name, context = "costly", 0

    def __init__(self, clock, cost_s):
        self.clock, self.cost_s, self.calls = clock, cost_s, 0

    def convert(self, window, tail, timings):
        self.calls += 1
        self.clock.t += self.cost_s
        return window[-tail:]

    def set_option(self, name, value):
        pass

    def options(self):
        return {}


@pytest.mark.parametrize("cost_ms, start_ms", [(5.0, 32.0), (0.66 * 32, 64.0), (0.64 * 32, 32.0),
                                               (60.0, 96.0), (100.0, 160.0)])
def test_start_block_is_the_smallest_the_converter_keeps_up_with(scripted, monkeypatch, cost_ms, start_ms):
    from mirage_desktop.voice import converters

    conv = CostlyConverter(scripted, cost_ms / 1000.0)
    monkeypatch.setattr(converters, "make_converter", lambda kind, settings: conv)
    pipe = _start()  # voice_block_ms 0: automatic
    assert pipe.status()["block_ms"] == start_ms
    probe = pipe.start_probe
    assert list(probe) == [b for b in controller_blocks_ms(MIN_BLOCK_MS) if b <= start_ms]
    assert probe[start_ms] < ACCEPT_BELOW and all(r >= ACCEPT_BELOW for b, r in probe.items() if b < start_ms)
    assert pipe.proc_ref_s() == pytest.approx(cost_ms / 1000.0)


def test_start_block_gives_up_within_its_budget(scripted, monkeypatch):
    from mirage_desktop.voice import converters

    conv = CostlyConverter(scripted, 2.0)  # slower than real time at every block
    monkeypatch.setattr(converters, "make_converter", lambda kind, settings: conv)
    pipe = _start()
    assert pipe.status()["block_ms"] == pipeline.FALLBACK_START_MS
    assert len(pipe.start_probe) < len(controller_blocks_ms(MIN_BLOCK_MS))  # stopped at the budget


def test_controller_rules_hold_at_the_smallest_blocks():
    step = 512  # 32 ms at 16 kHz
    c = RealtimeController(block=step, min_block=step, max_block=15 * step)
    assert [c.update(0.3) for _ in range(300)] == [None] * 300  # never below 32 ms
    acts = [c.update(0.78) for _ in range(38)]
    # the mean over the last 40 (two of them still 0.3) passes 0.75 at the 38th: 32 -> 64 ms
    assert acts == [None] * 37 + ["grow"] and c.block == 2 * step
    acts = [c.update(0.5) for _ in range(120)]
    assert acts == [None] * 119 + ["shrink"] and c.block == step
    acts = [c.update(0.85) for _ in range(40)]  # 40 consecutive > 0.80 falls back at 32 ms too
    assert acts[-1] == "fallback" and c.block == step
    assert c.accepted == 300 + 120 and c.processed == 300 + 38 + 120 + 40  # < 0.65 accepted


def test_fifo_inserts_silence_unless_it_padded():
    f = SampleFifo()
    at, before, inserted = f.write(np.ones(10, np.float32), pad_if_empty=5, insert=7, insert_at=2)
    assert (at, before, inserted, f.level) == (5, 0, 0, 15)  # empty: the pad, not the insert
    at, before, inserted = f.write(np.full(4, 2.0, np.float32), pad_if_empty=5, insert=14, insert_at=1)
    assert (at, before, inserted, f.level) == (15, 15, 14, 33)
    out = np.empty(33, np.float32)
    assert f.read_into(out) == 33
    assert np.array_equal(out[15:16], [2.0]) and not out[16:30].any() and np.array_equal(out[30:], [2.0] * 3)
