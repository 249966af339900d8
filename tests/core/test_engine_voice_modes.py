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
    eng = Engine(settings)
    eng.load_models()
    frames = Frames(eng)
    eng.start(ImageSource(astronaut, fps=30), [NullSink()])
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
