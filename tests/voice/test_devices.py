import sys

import pytest

from mirage_desktop.config import Settings
from mirage_desktop.errors import DeviceError
from mirage_desktop.metrics import Metrics
from mirage_desktop.voice import audio_io
from mirage_desktop.voice.pipeline import VoicePipeline


def test_list_devices_without_portaudio_is_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as when libportaudio is missing
    assert audio_io.list_devices() == []
    with pytest.raises(DeviceError, match="PortAudio"):
        audio_io.resolve_device("x", "input")


def test_virtual_cables_recognised():
    for name in ("CABLE Input (VB-Audio Virtual Cable)", "BlackHole 2ch", "Mirage Microphone", "mirage_mic_sink"):
        assert audio_io.is_virtual_cable(name)
    assert not audio_io.is_virtual_cable("HDA Intel PCH: ALC892 Analog")


@pytest.mark.audio
def test_list_devices_keys(pulse):
    devs = audio_io.list_devices()
    assert devs
    keys = {"index", "name", "hostapi", "max_input_channels", "max_output_channels", "default_samplerate",
            "is_virtual_cable"}
    assert all(keys <= set(d) for d in devs)


@pytest.mark.audio
def test_missing_device_is_a_clear_error_and_the_app_keeps_running(pulse):
    with pytest.raises(DeviceError) as ei:
        audio_io.resolve_device("Foo Mic 3000", "input")
    text = str(ei.value)
    assert text == ("input device 'Foo Mic 3000' not found — run `mirage devices` to list devices "
                    "and pass one with --input")
    assert "\n" not in text
    m = Metrics()
    pipe = VoicePipeline(Settings(enable_voice=True, voice_output="Nope Speaker"), m)
    assert pipe.start() is False  # no exception for `mirage run`
    st = pipe.status()
    assert st["running"] is False and "'Nope Speaker' not found" in st["error"]
    assert m.gauge("voice.error") == st["error"]
    with pytest.raises(DeviceError):
        pipe.start(strict=True)  # `mirage voice` turns this into "mirage: error: ..." and exit 2
    pipe.stop()


@pytest.mark.audio
def test_busy_device_is_a_clear_error(pulse, monkeypatch):
    import sounddevice as sd

    def busy(*a, **k):
        raise sd.PortAudioError("Error opening InputStream: Device unavailable [PaErrorCode -9985]")

    monkeypatch.setattr(sd, "InputStream", busy)
    pipe = VoicePipeline(Settings(enable_voice=True), Metrics())
    assert pipe.start() is False
    err = pipe.status()["error"]
    assert "is busy or unavailable" in err and "close the other app using it" in err
    assert pipe.status()["running"] is False
    pipe.stop()


def test_voice_cli_reports_missing_device(monkeypatch):
    import argparse

    from mirage_desktop.commands import voice as cli

    monkeypatch.setattr(audio_io, "list_devices", lambda: [])
    monkeypatch.setattr(audio_io, "pulse_available", lambda: False)
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--pitch", "+4", "--formant", "1.1", "--input", "Foo"])
    s = cli.settings_from_args(args)
    assert s.voice_pitch == 4.0 and s.voice_formant == 1.1 and s.voice_input == "Foo"
    with pytest.raises(DeviceError, match="input device 'Foo' not found"):
        cli.run(args)
