"""``mirage mic``: which PulseAudio modules are ours (no sound server needed: pactl is faked)."""

import subprocess

import pytest

from mirage_desktop.voice import mic

MODULES = "\n".join([
    "1\tmodule-null-sink\tsink_name=mirage_mic_sink_user",  # the user's own sinks and sources
    "2\tmodule-remap-source\tmaster=mirage_mic_sink_user.monitor source_name=mirage_mic_user",
    "3\tmodule-null-sink\tsink_name=xmirage_mic_sink",
    "4\tmodule-remap-source\tmaster=mirage_mic_sink.monitor source_name=mirage_mic2 source_properties='a b'",
    "5\tmodule-null-sink\tsink_name=mirage_mic_sink "
    "sink_properties='device.description=\"Mirage Microphone Sink\"'",  # ours
    "6\tmodule-remap-source\tmaster=mirage_mic_sink.monitor source_name=mirage_mic "
    "source_properties='device.description=\"Mirage Microphone\"'",  # ours
    "7\tmodule-loopback\tsource=mirage_mic sink_name=mirage_mic_sink",  # not a module type we load
    "8\tmodule-null-sink\tsink_name=odd sink_properties='unbalanced",
])


@pytest.fixture
def fake_pactl(monkeypatch):
    calls = []
    state = {"modules": MODULES}

    def pactl(*args, timeout=5.0):
        calls.append(args)
        if args[:3] == ("list", "short", "modules"):
            return subprocess.CompletedProcess(args, 0, state["modules"] + "\n", "")
        if args[0] == "unload-module":
            state["modules"] = "\n".join(ln for ln in state["modules"].splitlines()
                                         if not ln.startswith(args[1] + "\t"))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(mic, "pactl", pactl)
    monkeypatch.setattr(mic, "_require_pulse", lambda: None)
    return calls


def test_only_our_modules_by_whole_argument(fake_pactl):
    assert [m[0] for m in mic._ours()] == ["5", "6"]
    st = mic.status()
    assert st["ready"] and st["modules"] == ["5", "6"]


def test_remove_leaves_modules_that_only_start_with_our_names(fake_pactl):
    st = mic.remove()
    unloaded = [c[1] for c in fake_pactl if c[0] == "unload-module"]
    assert unloaded == ["6", "5"]  # remap source first, and nothing of the user's
    assert st["modules"] == [] and not st["ready"]
