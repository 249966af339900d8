"""Server-side voice per `mirage serve` session: the microphone track is converted (WORLD by default)
on the session's own voice worker and comes back on the outgoing audio track; the video is held to
the converted voice (A/V sync); a converter that fails falls back to pass-through for its session
only, with the reason; bad option values are refused with one line. Over loopback, real aiortc on
both ends, Opus both ways."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_support import Received
from tests_support import HANG_GUARD_S

from mirage_desktop.serve.client import AUDIO_RATE, FeedAudioTrack, FeedTrack, RemoteSession
from mirage_desktop.serve.exposition import SESSION_SERIES
from mirage_desktop.serve.tracks import REANCHOR_S
from mirage_desktop.voice.converters import make_converter
from mirage_desktop.voice.f0 import harmonic_signal
from mirage_desktop.voice.stream import MAX_QUEUED_S, VoiceStream
from mirage_desktop.voice.f0 import median_f0
from mirage_desktop.voice.resample import resample_block

F0 = 150.0


class Tone:
    """A voice-like harmonic tone (voice/f0.py's harmonic_signal, 1/k harmonics), phase-continuous
    across the microphone's 20 ms blocks."""

    def __init__(self, f0: float = F0, amplitude: float = 0.3):
        self.f0, self.i = f0, 0
        ks = np.arange(1, 13)
        self.ks = ks[ks * f0 < AUDIO_RATE / 2]
        peak = np.abs(self._at(np.arange(int(AUDIO_RATE / f0) * 4))).max()
        self.gain = amplitude / peak

    def _at(self, idx):
        ph = 2 * np.pi * self.f0 * idx[:, None] / AUDIO_RATE
        return (np.sin(ph * self.ks[None, :]) / self.ks[None, :]).sum(axis=1)

    def __call__(self, n: int) -> np.ndarray:
        idx = np.arange(self.i, self.i + n)
        self.i += n
        return (self._at(idx) * self.gain).astype(np.float32)


class Heard:
    """Audio the client got back; ``wait_seconds(s)`` blocks until ``s`` more seconds have come."""

    def __init__(self):
        self.cond = threading.Condition()
        self.samples: list[np.ndarray] = []
        self.rate = 0

    def __call__(self, x, sr, t):
        with self.cond:
            self.samples.append(x)
            self.rate = sr
            self.cond.notify_all()

    def wait_seconds(self, s: float) -> np.ndarray:
        with self.cond:
            start = len(self.samples)
            assert self.cond.wait_for(lambda: self.rate and sum(a.size for a in self.samples[start:]) >= s * self.rate,
                                      HANG_GUARD_S), "no audio came back"
            out = np.concatenate(self.samples[start:])
            del self.samples[:start]
            return out


class Control:
    """The client's control channel: every message the server sent, and waits for them."""

    def __init__(self, rs: RemoteSession, client_loop):
        self.rs, self.client_loop = rs, client_loop
        self.cond = threading.Condition()
        self.messages: list[dict] = []
        rs.control.on("message", self._on)

    def _on(self, msg) -> None:
        with self.cond:
            self.messages.append(json.loads(msg))
            self.cond.notify_all()

    def opened(self) -> None:
        async def go():
            ch = self.rs.control
            if ch.readyState != "open":
                ev = asyncio.Event()
                ch.on("open", ev.set)
                await asyncio.wait_for(ev.wait(), HANG_GUARD_S)

        self.client_loop.run(go())

    def wait(self, pred, start: int = 0) -> dict:
        with self.cond:
            assert self.cond.wait_for(lambda: any(pred(m) for m in self.messages[start:]), HANG_GUARD_S), \
                f"no such control message in {self.messages[start:]}"
            return next(m for m in self.messages[start:] if pred(m))

    def ask(self, name: str, value) -> dict:
        """Send one option; the server's reply to it (``option`` ok, or ``error``)."""
        with self.cond:
            start = len(self.messages)
        self.client_loop.loop.call_soon_threadsafe(self.rs.send_control,
                                                   {"type": "option", "name": name, "value": value})
        return self.wait(lambda m: m.get("type") in ("option", "error") and
                         (m.get("name") == name or m.get("type") == "error"), start)


def open_session(t, token, client_loop, frame, server, tone: Tone | None = None, audio: bool = True):
    got, heard = Received(), Heard()
    rs = RemoteSession(t.url, token, on_frame=got, on_audio=heard)
    ans = client_loop.run(rs.connect(FeedTrack(lambda n: frame.copy(), fps=15),
                                     audio=FeedAudioTrack(tone or Tone()) if audio else None))
    ctl = Control(rs, client_loop)
    ctl.opened()
    s = server.sessions[ans["session"]]
    got.wait(2)
    if audio:
        assert s.voice.ready.wait(HANG_GUARD_S)  # its worker has picked the block size
    return rs, ctl, s, heard


def pitch_of(heard: Heard) -> float:
    heard.wait_seconds(0.6)  # what was in flight when the option changed: Opus, jitter buffers, the FIFO
    x = heard.wait_seconds(1.5)
    return median_f0(resample_block(x, heard.rate, 16000), sr=16000)


def shifted(st: float) -> float:
    return F0 * 2 ** (st / 12)


def close_all(client_loop, server, *clients):
    for rs in clients:
        client_loop.run(rs.close())
    assert server.wait_sessions(lambda n: n == 0, HANG_GUARD_S)


def test_two_sessions_each_get_their_own_pitch_and_the_metrics_say_so(serve, token, client_loop, frame):
    t, server = serve()
    a = open_session(t, token, client_loop, frame, server)
    b = open_session(t, token, client_loop, frame, server)
    for (rs, ctl, s, heard), pitch in ((a, 4), (b, -3)):
        assert ctl.ask("voice_pitch", pitch)["ok"]
        reply = ctl.ask("enable_voice", True)
        assert reply["ok"] and reply["voice"]["enabled"] and reply["voice"]["options"]["pitch"] == pitch
    for (rs, ctl, s, heard), pitch in ((a, 4), (b, -3)):
        got = pitch_of(heard)
        assert abs(got - shifted(pitch)) / shifted(pitch) < 0.03, (pitch, got)
        v = s.describe()["voice"]
        assert v["converting"] and v["converter"] == "world" and v["passthrough_reason"] is None
        assert v["block_ms"] >= 32 and v["latency_ms"] > v["block_ms"]  # the block is part of the latency
    # /metrics: per-session voice latency and converter time, as summaries
    text = _get(client_loop, t.url + "/metrics", token)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in SESSION_SERIES:
        fam = fams[name]
        assert fam.type == "summary"
        sessions = {x.labels["session"] for x in fam.samples if x.labels.get("quantile") == "0.5"}
        assert sessions == {a[2].id, b[2].id}, name
        for x in fam.samples:
            if x.labels.get("quantile") == "0.5":
                assert 0 < x.value < 60, (name, x)  # seconds: a real measurement
    conns = json.loads(_get(client_loop, t.url + "/webrtc/connections", token))
    by_id = {c["id"]: c for c in conns["sessions"]}
    for _, _, s, _ in (a, b):
        v = by_id[s.id]["voice"]
        assert v["converting"] and v["measured_latency_p50_ms"] > 0 and v["converter_p50_ms"] > 0
    close_all(client_loop, server, a[0], b[0])


def test_voice_off_comes_back_unchanged_and_the_video_is_not_held(serve, token, client_loop, frame):
    t, server = serve()
    rs, ctl, s, heard = open_session(t, token, client_loop, frame, server)
    assert abs(pitch_of(heard) - F0) / F0 < 0.01
    x = heard.wait_seconds(1.0)
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    freqs = np.fft.rfftfreq(x.size, 1.0 / heard.rate)
    assert abs(freqs[int(np.argmax(spec[1:])) + 1] - F0) < 3  # the fundamental, where it was sent
    v = s.describe()["voice"]
    assert not v["enabled"] and not v["converting"] and v["passthrough_reason"] == "voice conversion off"
    av = s.engine.pipeline.av
    assert not av.master and av.delay_s == 0.0  # no voice to wait for: the video leaves as it comes
    assert s.describe()["av"]["mode"] == "none"
    close_all(client_loop, server, rs)


class Broken:
    """A converter whose model fails on every block — it raises, or returns NaNs (the probe's timing
    swallows it, as it does for a real model that fails)."""

    name = "world"
    context = 0

    def __init__(self, how: str):
        self.how = how

    def convert(self, window, tail, timings):
        if self.how == "nan":
            return np.full(tail, np.nan, np.float32)
        raise RuntimeError("model exploded")

    def set_option(self, name, value):
        pass

    def options(self):
        return {}


@pytest.mark.parametrize("failure,says", [("raises", "model exploded"), ("nan", "returned bad audio"),
                                          ("cannot_load", "could not be loaded: model exploded while loading")])
def test_a_failing_converter_passes_its_session_through_and_the_other_keeps_converting(
        serve, token, client_loop, frame, failure, says):
    t, server = serve()
    real = server.voice_converter
    calls = []

    def factory():  # the first session's converter fails; the second's is the real one
        calls.append(1)
        if len(calls) == 1:
            if failure == "cannot_load":
                raise RuntimeError("model exploded while loading")
            return Broken(failure)
        return real()

    server.voice_converter = factory
    bad = open_session(t, token, client_loop, frame, server)
    good = open_session(t, token, client_loop, frame, server)
    for rs, ctl, s, heard in (bad, good):
        ctl.ask("voice_pitch", 4)
        ctl.ask("enable_voice", True)
    rs, ctl, s, heard = bad
    told = ctl.wait(lambda m: m.get("type") == "voice" and not m["converting"] and m["enabled"]
                    and says in (m["passthrough_reason"] or ""))
    assert "\n" not in told["passthrough_reason"]
    assert abs(pitch_of(heard) - F0) / F0 < 0.01  # passed through: the voice as it came
    v = s.describe()["voice"]
    assert not v["converting"] and says in v["passthrough_reason"]
    assert not s.engine.pipeline.av.master  # passed through: no hold
    got = pitch_of(good[3])
    assert abs(got - shifted(4)) / shifted(4) < 0.03, got
    assert good[2].describe()["voice"]["converting"]
    assert len(server.sessions) == 2 and bad[2].close_reason is None  # nothing else happened to either
    close_all(client_loop, server, bad[0], good[0])


def test_with_voice_on_the_video_is_held_by_the_measured_voice_latency(serve, token, client_loop, frame):
    t, server = serve()
    rs, ctl, s, heard = open_session(t, token, client_loop, frame, server)
    cond = threading.Condition()
    seen: list[tuple[float, float, float, float]] = []  # (hand-over - capture, voice latency, hold, ready)
    settled = []

    def on_frame(pkt):  # the output thread, right after the frame went to the outgoing track
        now = time.perf_counter()
        lat = s.voice.master_latency_s()
        av = s.engine.pipeline.av
        with cond:
            if lat is not None:
                seen.append((now - pkt.t_capture, lat, av.delay_s, av.ready_latency_s(50) or 0.0))
                recent = seen[-20:]
                if len(recent) == 20 and all(abs(hold - la) < 0.010 for _, la, hold, _ in recent) and not settled:
                    settled.append(len(seen))  # the hold has reached the voice latency (slew-limited)
            cond.notify_all()

    token_ = s.engine.subscribe_frames(on_frame)
    ctl.ask("voice_pitch", 4)
    ctl.ask("enable_voice", True)
    with cond:
        assert cond.wait_for(lambda: settled and len(seen) >= settled[0] + 30, HANG_GUARD_S), \
            f"the hold did not reach the voice latency: {seen[-5:]}"
        after = seen[settled[0]:settled[0] + 30]
    s.engine.unsubscribe_frames(token_)
    handover = np.median([h for h, _, _, _ in after])
    voice = np.median([la for _, la, _, _ in after])
    ready = np.median([r for _, _, _, r in after])
    assert voice > ready  # the converted voice takes longer than the video: there is something to wait for
    # each frame is handed over when the voice captured with it is: capture + the voice latency. The
    # hold follows the measured latency at 4 ms per frame, so over these 30 frames it can be off by as
    # much as the latency itself moved in them (underruns re-pad the voice FIFO on a loaded machine)
    moved = max(la for _, la, _, _ in after) - min(la for _, la, _, _ in after)
    assert abs(handover - voice) < 0.030 + moved, (handover, voice, moved)
    av = s.describe()["av"]
    assert av["mode"] == "voice" and av["hold_ms"] > ready * 1000 and av["audio_latency_p50_ms"] > 0
    close_all(client_loop, server, rs)


@pytest.mark.parametrize("name,value,says", [
    ("enable_voice", "banana", "enable_voice"),
    ("voice_pitch", 99, "voice_pitch"),
    ("voice_pitch", "high", "voice_pitch"),
    ("voice_formant", 7, "voice_formant"),
    ("voice_preset", "opera", "voice_preset"),
    ("voice_speed", 2, "use one of"),
])
def test_bad_voice_options_are_refused_with_one_line(serve, token, client_loop, frame, name, value, says):
    t, server = serve()
    rs, ctl, s, heard = open_session(t, token, client_loop, frame, server)
    reply = ctl.ask(name, value)
    assert reply["type"] == "error" and says in reply["error"] and "\n" not in reply["error"], reply
    assert "use " in reply["error"]  # the line names the fix
    assert not s.voice.enabled and s.voice.converter.options()["pitch"] == 0.0  # nothing was applied
    assert ctl.ask("voice_pitch", 2)["ok"]  # the session goes on taking good values
    assert s.close_reason is None
    close_all(client_loop, server, rs)


def test_a_voice_option_without_a_microphone_says_what_to_do(serve, token, client_loop, frame):
    t, server = serve()
    rs, ctl, s, heard = open_session(t, token, client_loop, frame, server, audio=False)
    reply = ctl.ask("enable_voice", True)
    assert reply["type"] == "error" and "no audio track" in reply["error"] and "microphone" in reply["error"]
    assert s.describe()["voice"] is None and s.close_reason is None
    close_all(client_loop, server, rs)


def test_rvc_models_are_loaded_once_and_shared_by_the_sessions(serve, token, client_loop, frame, tmp_path,
                                                                shared_engine):
    from mirage_desktop.testing.voice_models import build_all

    models = build_all(tmp_path, f0_hz=200.0)
    t, server = serve()
    server.engine = type(shared_engine)(shared_engine.settings.replace(
        voice_converter="rvc", voice_model=str(models["model"]), voice_encoder=str(models["encoder"]),
        voice_rmvpe=str(models["rmvpe"]), voice_f0_method="dio"))
    server.engine.use_shared_models(shared_engine)
    a = open_session(t, token, client_loop, frame, server)
    b = open_session(t, token, client_loop, frame, server)
    ca, cb = a[2].voice.converter, b[2].voice.converter
    assert ca.name == cb.name == "rvc" and ca is not cb
    assert ca.model is cb.model is server._voice_model.model  # one copy of the ONNX sessions
    a[1].ask("voice_pitch", 4)
    assert ca.pitch == 4 and cb.pitch == 0  # each session its own options
    for rs, ctl, s, heard in (a, b):
        ctl.ask("enable_voice", True)
    for rs, ctl, s, heard in (a, b):
        assert s.voice.metrics.wait_for("voice.switch_convert", 1, HANG_GUARD_S)
        assert s.describe()["voice"]["converter"] == "rvc"
    close_all(client_loop, server, a[0], b[0])


def test_the_audio_track_is_stamped_on_the_server_clock(serve, token, client_loop, frame):
    """pts of the outgoing voice advance with the server's clock at hand-over (48 kHz), from the
    session's origin — the contract client-side sync relies on."""
    t, server = serve()
    rs, ctl, s, heard = open_session(t, token, client_loop, frame, server)
    track = s.audio_out
    stamps = []
    real_read = track.read

    def read(n, t_handover):
        stamps.append((track._pts, t_handover, time.perf_counter()))
        return real_read(n, t_handover)

    track.read = read
    heard.wait_seconds(1.0)
    track.read = real_read
    pts = np.array([p for p, _, _ in stamps])
    assert np.all(np.diff(pts) >= 960)  # 20 ms frames, never stamped in the past
    for p, _, now in stamps:  # the stamp is the server's clock at hand-over, never ahead, never stale
        stamp_t = s.origin + p / 48000
        assert now - REANCHOR_S <= stamp_t <= now + 0.001, (stamp_t - now)
    close_all(client_loop, server, rs)


def _get(client_loop, url, token):
    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
                return await r.text()

    return client_loop.run(go())


# ---- the device-free core on its own (no WebRTC): exact, on scripted times ---------------------

def _lockstep(stream: VoiceStream, x: np.ndarray, t0: float = 100.0, block: int = 960) -> np.ndarray:
    """Feed ``x`` in 20 ms chunks arriving on a scripted clock, reading 20 ms back after each one
    the worker has taken (a reader that keeps pace: nothing is dropped as stalled output); then
    what is left."""
    out = []
    for n, i in enumerate(range(0, x.size, block), start=1):
        stream.push(x[i:i + block], t0 + (i + block) / 48000)
        assert stream.metrics.wait_for("voice.in_chunks", n, HANG_GUARD_S)
        out.append(stream.read(block, t0 + (i + block) / 48000))
    while stream._fifo.level:
        out.append(stream.read(block, t0))
    return np.concatenate(out)


def test_stream_voice_off_is_the_input_sample_for_sample():
    x = harmonic_signal(F0, 1.0, sr=48000)
    s = VoiceStream(make_converter("world"), name="t-off", enabled=False)
    s.start()
    try:
        assert s.ready.wait(HANG_GUARD_S)
        y = _lockstep(s, x)
    finally:
        s.stop()
    first = int(np.flatnonzero(y)[0])
    assert first > 0  # the margin in front (an empty FIFO: room for the next chunks' jitter)
    assert np.array_equal(y[first:first + x.size], x)  # full band, no resampling, nothing changed
    assert not s.running


def test_stream_converts_to_the_pitch_asked():
    x = harmonic_signal(F0, 2.0, sr=48000)
    s = VoiceStream(make_converter("world"), name="t-on")
    s.set_option("pitch", 5)  # before the worker built anything: applied all the same
    s.start()
    try:
        assert s.ready.wait(HANG_GUARD_S)
        y = _lockstep(s, x)
    finally:
        s.stop()
    got = median_f0(resample_block(y[9600:], 48000, 16000), sr=16000)
    assert abs(got - shifted(5)) / shifted(5) < 0.02, got
    assert s.metrics.counter("voice.switch_convert") == 1 and s.metrics.histogram("voice.converter_ms").count > 0


def test_stream_latency_is_arrival_to_hand_over():
    s = VoiceStream(make_converter("world"), name="t-lat", enabled=False)
    s.start()
    try:
        assert s.ready.wait(HANG_GUARD_S)
        s.push(np.full(960, 0.25, np.float32), 10.0)  # arrived at 10.0 s: its first sample at 9.98 s
        assert s.metrics.wait_for("voice.in_chunks", 1, HANG_GUARD_S)
        pad = s._fifo.level - 960
        s.read(960, 10.5)  # handed over at 10.5 s, after ``pad`` samples of margin
    finally:
        s.stop()
    (ms,) = s.metrics.histogram("voice.latency_e2e").values()
    assert ms == pytest.approx((10.5 + pad / 48000 - 9.98) * 1000, abs=1e-6)


def test_stream_input_beyond_the_bound_is_dropped_and_still_counted_by_the_clock():
    s = VoiceStream(make_converter("world"), name="t-flood", enabled=False)
    x = np.full(960, 0.1, np.float32)
    n = int(3 * MAX_QUEUED_S * 48000 / 960)  # three times what may wait (the worker is not started yet)
    for i in range(n):
        s.push(x, 1.0 + i * 0.02)
    dropped = s.metrics.counter("voice.dropped_input_samples")
    assert dropped >= (n * 960 - MAX_QUEUED_S * 48000) and s._queued <= MAX_QUEUED_S * 48000
    s.start()
    try:
        assert s.metrics.wait_for("voice.in_chunks", n - dropped // 960, HANG_GUARD_S)
    finally:
        s.stop()
    assert s._in_frames == n * 960  # the samples that were dropped still moved the input clock on


class Slow:
    """A converter twice as slow as real time, on a scripted clock (each block "takes" 2 x its length)."""

    name = "slow"
    context = 0

    def __init__(self):
        self.t = 0.0

    def clock(self) -> float:
        return self.t

    def convert(self, window, tail, timings):
        self.t += 2.0 * tail / 16000
        return np.asarray(window[-tail:], np.float32)

    def set_option(self, name, value):
        pass

    def options(self):
        return {}


def test_stream_a_converter_that_cannot_keep_up_falls_back_with_its_reason():
    conv = Slow()
    told = []
    s = VoiceStream(conv, name="t-slow", clock=conv.clock, on_change=told.append)
    s.start()
    try:
        assert s.ready.wait(HANG_GUARD_S)
        y = _lockstep(s, harmonic_signal(F0, 3.0, sr=48000))
    finally:
        s.stop()
    reason = s.passthrough_reason
    assert not s.converting and "too slow" in reason and "40 consecutive" in reason, reason
    assert told[-1]["converting"] is False and told[-1]["passthrough_reason"] == reason  # the session is told
    assert s.metrics.counter("voice.switch_direct") >= 1  # and the voice goes on, as it came
    assert np.sqrt(np.mean(y[-48000:] ** 2)) > 0.1
