"""VoicePipeline start/stop/options with fake devices (no sound server, no PortAudio streams)."""

import pytest

from mirage_desktop.config import Settings
from mirage_desktop.errors import DeviceError, MirageError
from mirage_desktop.metrics import Metrics
from mirage_desktop.voice import audio_io
from mirage_desktop.voice.pipeline import VoicePipeline


class FakeStream:
    def __init__(self, dev, fail_start=None):
        self.dev, self.fail_start, self.active, self.latency = dev, fail_start, False, 0.01

    def start(self):
        if self.fail_start:
            raise RuntimeError(self.fail_start)
        self.active = True

    def abort(self):
        self.active = False

    def close(self):
        pass


@pytest.fixture
def fake_devices(monkeypatch):
    """Devices "Fake Mic" / "Fake Speaker"; ``fail[kind]`` makes that stream's start() raise."""
    fail = {}

    def resolve(spec, kind):
        name = "Fake Mic" if kind == "input" else "Fake Speaker"
        return audio_io.ResolvedDevice(kind, 0, name, 48000.0, 1)

    def open_stream(dev, samplerate, blocksize, callback, channels=None, latency="low"):
        return FakeStream(dev, fail.get(dev.kind))

    monkeypatch.setattr(audio_io, "resolve_device", resolve)
    monkeypatch.setattr(audio_io, "open_stream", open_stream)
    return fail


def _settings(**kw):
    return Settings(enable_voice=True, voice_converter="passthrough", **kw)


def test_input_stream_failure_names_the_input_device(fake_devices):
    fake_devices["input"] = "Device unavailable [PaErrorCode -9985]"
    pipe = VoicePipeline(_settings(), Metrics())
    assert pipe.start() is False
    err = pipe.status()["error"]
    assert err.startswith("input device 'Fake Mic' is busy or unavailable") and "Fake Speaker" not in err
    assert "--input" in err and pipe.status()["running"] is False
    with pytest.raises(DeviceError, match="input device 'Fake Mic'"):
        pipe.start(strict=True)


def test_output_stream_failure_names_the_output_device(fake_devices):
    fake_devices["output"] = "Invalid sample rate"
    pipe = VoicePipeline(_settings(), Metrics())
    assert pipe.start() is False
    err = pipe.status()["error"]
    assert err.startswith("cannot open output device 'Fake Speaker'") and "Fake Mic" not in err


def test_rejected_option_is_not_stored(fake_devices):
    s = Settings(enable_voice=True, voice_pitch=2.0, voice_formant=1.1)
    pipe = VoicePipeline(s, Metrics())  # not started: no engine, nothing to validate with but the checks
    for name, bad in (("pitch", 99), ("formant", 5), ("preset", "nope"), ("f0_method", "crepe"),
                      ("pitch", "high")):
        with pytest.raises(MirageError):
            pipe.set_option(name, bad)
    assert (pipe.settings.voice_pitch, pipe.settings.voice_formant) == (2.0, 1.1)
    assert pipe.settings.voice_preset == "" and pipe.settings.voice_f0_method == ""
    assert pipe.start() is True  # the settings still start a converter
    try:
        with pytest.raises(MirageError, match="pitch \\+99 is out of range"):
            pipe.set_option("pitch", 99)
        assert pipe.settings.voice_pitch == 2.0 and pipe.status()["options"]["pitch"] == 2.0
        with pytest.raises(MirageError):  # the converter's own check (WORLD: no rmvpe)
            pipe.set_option("f0_method", "rmvpe")
        assert pipe.settings.voice_f0_method == ""
        pipe.set_option("pitch", -3)
        assert pipe.settings.voice_pitch == -3.0 and pipe.status()["options"]["pitch"] == -3.0
        assert s.voice_pitch == 2.0  # the caller's settings are never changed by the pipeline
    finally:
        pipe.stop()
    assert pipe.start() is True  # a restart with the stored settings works
    pipe.stop()
    # pass-through accepts any option itself, the shared checks still hold
    s2 = _settings()
    pipe2 = VoicePipeline(s2, Metrics())
    assert pipe2.start() is True
    try:
        with pytest.raises(MirageError):
            pipe2.set_option("pitch", 99)
        assert pipe2.settings.voice_pitch == 0.0
    finally:
        pipe2.stop()


def test_restart_starts_with_empty_input_and_option_queues(fake_devices, monkeypatch):
    import numpy as np

    seen = []
    monkeypatch.setattr(VoicePipeline, "_work",
                        lambda self: seen.append((self._in_q.qsize(), self._pending_options.qsize())))
    built = []
    orig_build = VoicePipeline._build_engine

    def build(self):
        built.append(self.converter_kind)
        return orig_build(self)

    monkeypatch.setattr(VoicePipeline, "_build_engine", build)
    pipe = VoicePipeline(_settings(), Metrics())
    assert pipe.start() is True
    pipe.stop()
    for _ in range(5):  # blocks captured just before the stop, never processed
        pipe._in_q.put_nowait(np.ones(480, dtype=np.float32))
    pipe.set_option("converter", "world")  # queued while stopped
    assert pipe.start() is True
    pipe.stop()
    assert seen == [(0, 0), (0, 0)]  # the restarted worker sees no stale blocks, no queued switch
    assert built == ["passthrough", "world"]  # the switch is built once, by the restart


def test_no_preset_and_the_default_f0_method_are_accepted_live(fake_devices):
    pipe = VoicePipeline(Settings(enable_voice=True, voice_preset="deeper"), Metrics())
    assert pipe.start() is True
    try:
        pipe.set_option("preset", "")  # "None" in the window
        pipe.set_option("f0_method", "")  # "the converter's default"
        assert pipe.settings.voice_preset == "" and pipe.settings.voice_f0_method == ""
    finally:
        pipe.stop()
