"""Voice as part of the engine (`mirage run --voice`): starts with the video, follows live options."""

from __future__ import annotations

import pytest

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.outputs.sinks import NullSink
from mirage_desktop.vision.capture import ImageSource

pytestmark = pytest.mark.audio

HANG_GUARD_S = 120.0  # only stops a broken build from hanging the suite; nothing asserts on time


def test_engine_runs_voice_next_to_video(pulse):
    import numpy as np

    eng = Engine(Settings(enable_voice=True, voice_pitch=2.0))
    eng.load_models()
    eng.start(ImageSource(np.full((240, 320, 3), 90, np.uint8), fps=30), [NullSink()])
    try:
        assert eng.voice is not None and eng.voice.status()["running"], eng.snapshot().get("voice")
        # a converted block and a video frame, however long this machine takes for them
        assert eng.metrics.wait_for("voice.chunks", 1, HANG_GUARD_S), eng.snapshot()["voice"]
        assert eng.metrics.wait_for("frames.out", 1, HANG_GUARD_S)
        snap = eng.snapshot()
        assert snap["voice"]["running"], snap["voice"]
        assert snap["voice"]["chunks"] > 0 and snap["counters"]["frames.out"] > 0
        eng.set_option("voice_pitch", 5.0)
        assert eng.voice.status()["options"]["pitch"] == pytest.approx(5.0)
        eng.set_option("enable_voice", False)
        assert eng.voice is None and "voice" not in eng.snapshot()
    finally:
        eng.stop()
