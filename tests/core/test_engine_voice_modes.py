"""Which voice path the engine runs beside the video, and what a failing one does to the status."""

from __future__ import annotations

import pytest
from tests_support import Frames, now

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine, virtual_microphone
from mirage_desktop.outputs.sinks import NullSink
from mirage_desktop.vision.capture import ImageSource

pytestmark = pytest.mark.virtual_mic


def test_the_voice_mode_follows_the_settings():
    e = Engine(Settings(enable_voice=True))
    assert e.wanted_voice_mode() == "convert"
    e = Engine(Settings(lipsync_mic=True, voice_output="CABLE Input (VB-Audio Virtual Cable)"))
    assert e.wanted_voice_mode() == "lipsync"
    e = Engine(Settings(lipsync_mic=False, voice_output="CABLE Input (VB-Audio Virtual Cable)"))
    assert e.wanted_voice_mode() is None
    # a chosen output that is not a virtual microphone (the speakers): no lip-sync microphone
    assert virtual_microphone(Settings(voice_output="Built-in Speakers")) is None
    assert Engine(Settings(voice_output="Built-in Speakers")).wanted_voice_mode() is None


def _run_with(settings, astronaut):
    import pyvirtualcam

    pyvirtualcam.register_backend("voice-modes-cam", NoCamera)  # a call app's camera to sync with
    eng = Engine(settings)
    eng.load_models()
    frames = Frames(eng)
    eng.start(ImageSource(astronaut, fps=30), [_vcam()])
    try:
        mark = now()
        frames.after(mark, 5)  # the video goes on whatever the voice did
        return eng.status(), eng.snapshot(), eng.voice_mode, eng.pipeline.audio_latency
    finally:
        eng.stop()


def test_a_lipsync_microphone_that_cannot_start_is_a_warning_and_the_video_goes_on(astronaut):
    st, snap, mode, master = _run_with(Settings(lipsync_mic=True, voice_output="Mirage Microphone",
                                                voice_input="no such microphone 1234"), astronaut)
    voice = [i for i in st.issues if i["source"] == "voice"]
    assert voice and voice[0]["level"] == "warning" and voice[0]["message"].startswith("lip-sync microphone")
    assert mode is None and master is None  # no master clock: the video leaves as it comes
    assert "voice" not in snap  # no failed voice pipeline left behind to turn the banner red
    assert not [i for i in st.issues if i["level"] == "error" and "microphone" in i["message"]]


def test_a_voice_changer_that_cannot_start_is_an_error(astronaut):
    st, snap, mode, _ = _run_with(Settings(enable_voice=True, voice_output="Mirage Microphone",
                                           voice_input="no such microphone 1234"), astronaut)
    voice = [i for i in st.issues if i["source"] == "voice"]
    assert voice and voice[0]["level"] == "error"
    assert snap["health"]["level"] == "red"


class FakeVoice:
    """The voice pipeline where this machine's sound devices do not matter (what the engine does
    with its answers is under test, not the sound)."""

    started: list = []
    failing: set = set()

    def __init__(self, settings, metrics, mode="voice"):
        self.mode, self.error, self.target, self.running = mode, None, None, False

    def start(self, strict=False):
        FakeVoice.started.append(self.mode)
        if self.mode in FakeVoice.failing:
            self.error = "the RVC model is missing"
            return False
        self.running = True
        return True

    def stop(self):
        self.running = False

    def latency_s(self):
        return 0.1 if self.running else None

    def set_target_latency_s(self, x):
        self.target = x

    def set_option(self, name, value):
        pass

    def status(self):
        return {"running": self.running, "error": self.error}


class NoCamera:
    def __init__(self, **kw):
        pass

    def send(self, frame):
        pass

    def close(self):
        pass

    def device(self):
        return "test-vcam"

    def native_fourcc(self):
        return None


@pytest.fixture
def fake_voice(monkeypatch):
    import pyvirtualcam

    pyvirtualcam.register_backend("voice-modes-cam", NoCamera)
    FakeVoice.started, FakeVoice.failing = [], set()
    monkeypatch.setattr("mirage_desktop.voice.pipeline.VoicePipeline", FakeVoice)
    monkeypatch.setattr("mirage_desktop.engine.virtual_microphone", lambda s: "Mirage Microphone")
    return FakeVoice


def _vcam():
    from mirage_desktop.outputs.sinks import VirtualCameraSink

    return VirtualCameraSink(backend="voice-modes-cam", width=64, height=64, fps=30)


def test_a_voice_changer_that_fails_falls_back_to_the_lipsync_microphone(fake_voice, astronaut):
    eng = Engine(Settings())
    eng.load_models()
    eng.start(ImageSource(astronaut, fps=30), [_vcam()])
    try:
        assert eng.voice_mode == "lipsync" and fake_voice.started == ["lipsync"]
        fake_voice.failing.add("voice")
        eng.set_option("enable_voice", True)
        assert fake_voice.started == ["lipsync", "voice", "lipsync"]
        assert eng.voice_mode == "lipsync" and eng.voice.running  # the call still hears the voice
        issue = [i for i in eng.status().issues if i["source"] == "voice"][0]
        assert issue["level"] == "error" and "RVC model" in issue["message"]
        fake_voice.failing.clear()  # the model is there now: asking again starts the changer
        eng.set_option("enable_voice", False)
        eng.set_option("enable_voice", True)
        assert eng.voice_mode == "convert" and not [i for i in eng.status().issues if i["source"] == "voice"]
    finally:
        eng.stop()


def test_no_lipsync_microphone_for_a_file_render_or_without_a_virtual_camera(fake_voice, astronaut, tmp_path):
    eng = Engine(Settings())
    eng.load_models()
    eng.start(ImageSource(astronaut, fps=30, frames=5, realtime=False), [NullSink()], lossless=True)
    eng.wait(120)
    eng.stop()
    eng.start(ImageSource(astronaut, fps=30), [NullSink()])  # a preview only: no call to sync
    eng.stop()
    assert fake_voice.started == []


def test_the_run_summary_names_the_voice_path():
    from mirage_desktop.commands.run import av_summary

    snap = {"stages": {"av.offset_ms": {"count": 5, "p50": 1.0, "p95": 2.0}}, "counters": {},
            "gauges": {"av.mode": "none"}}
    assert av_summary(snap, "lipsync")[0].startswith("A/V (lip-sync microphone)")
