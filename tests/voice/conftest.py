"""Fixtures for the voice tests: synthetic RVC models, espeak-ng speech, a PulseAudio server."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

HANG_GUARD_S = 60.0  # for commands that answer at once on an idle machine; only a guard against a hang


@pytest.fixture(scope="session")
def rvc_models(tmp_path_factory):
    from mirage_desktop.testing.voice_models import build_all

    return build_all(tmp_path_factory.mktemp("rvc"), f0_hz=200.0)


@pytest.fixture(scope="session")
def speech():
    """~3 s of espeak-ng speech at 16 kHz, or skip when espeak-ng is missing."""
    exe = shutil.which("espeak-ng")
    if not exe:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    import tempfile

    import soundfile as sf

    from mirage_desktop.voice.resample import resample_block

    with tempfile.TemporaryDirectory() as d:
        wav = os.path.join(d, "s.wav")
        subprocess.run([exe, "-w", wav, "-s", "140", "Hello, this is a test of the voice changer."],
                       check=True, capture_output=True, timeout=HANG_GUARD_S)
        x, sr = sf.read(wav, dtype="float32")
    x = resample_block(x if x.ndim == 1 else x.mean(1), sr, 16000)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def _pulse_ok() -> bool:
    if not shutil.which("pactl"):
        return False
    try:
        return subprocess.run(["pactl", "info"], capture_output=True, timeout=HANG_GUARD_S).returncode == 0
    except (subprocess.SubprocessError, OSError):
        return False


@pytest.fixture(scope="session")
def pulse():
    """A running PulseAudio server: reuse one, or start one (root needs no --system); skip if impossible.

    Started as ``pulseaudio -D --exit-idle-time=-1 --system=false --disallow-exit``; killed again
    at the end of the session only if this fixture started it. ``-D`` returns once the daemon has
    started (its exit code is the daemon's start-up result), so there is nothing to wait for after.
    """
    if _pulse_ok():
        yield "existing"
        return
    exe = shutil.which("pulseaudio")
    if not exe:
        pytest.skip("no PulseAudio server reachable and `pulseaudio` is not installed (apt-get install pulseaudio)")
    res = subprocess.run([exe, "-D", "--exit-idle-time=-1", "--system=false", "--disallow-exit"],
                         capture_output=True, text=True, timeout=HANG_GUARD_S)
    if res.returncode != 0 or not _pulse_ok():
        pytest.skip(f"could not start pulseaudio (rc {res.returncode}): {res.stderr.strip()[-300:]}")
    yield "started"
    subprocess.run([exe, "--kill"], capture_output=True, timeout=HANG_GUARD_S)


@pytest.fixture
def null_sink(pulse):
    """Factory: creates PulseAudio null sinks for a test and unloads them afterwards."""
    made = []

    def make(name: str) -> str:
        res = subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={name}",
                              "rate=48000", "channels=1"], capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert res.returncode == 0, res.stderr
        made.append(res.stdout.strip())
        return name

    yield make
    for mod in reversed(made):
        subprocess.run(["pactl", "unload-module", mod], capture_output=True, timeout=HANG_GUARD_S)
