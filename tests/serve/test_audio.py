"""The client's audio track goes to the server and comes back (as it came while the session's
voice is off; conversion is tested in test_serve_voice.py)."""

from __future__ import annotations

import threading

import numpy as np
from serve_support import Received
from tests_support import HANG_GUARD_S

from mirage_desktop.serve.client import AUDIO_RATE, FeedAudioTrack, FeedTrack, RemoteSession


class Heard:
    def __init__(self):
        self.cond = threading.Condition()
        self.samples: list[np.ndarray] = []
        self.n = 0
        self.rate = 0

    def __call__(self, x, sr, t):
        with self.cond:
            self.samples.append(x)
            self.rate = sr
            self.n += x.size
            self.cond.notify_all()

    def wait_seconds(self, s: float) -> np.ndarray:
        with self.cond:
            start = len(self.samples)
            assert self.cond.wait_for(lambda: sum(a.size for a in self.samples[start:]) >= s * max(self.rate, 1)
                                      and self.rate, HANG_GUARD_S), "no audio came back"
            return np.concatenate(self.samples[start:])


def _dominant_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1.0 / sr)[int(np.argmax(spec[1:])) + 1])


def test_the_microphone_track_comes_back(serve, token, client_loop, frame):
    t, server = serve()
    phase = [0]

    def tone(n):  # 440 Hz, continuous across blocks
        i = np.arange(phase[0], phase[0] + n)
        phase[0] += n
        return 0.5 * np.sin(2 * np.pi * 440.0 * i / AUDIO_RATE)

    heard = Heard()
    got = Received()
    rs = RemoteSession(t.url, token, on_frame=got, on_audio=heard)
    client_loop.run(rs.connect(FeedTrack(lambda n: frame.copy(), fps=15), audio=FeedAudioTrack(tone)))
    got.wait(2)
    heard.wait_seconds(0.5)  # past the codec's start-up
    x = heard.wait_seconds(1.0)
    assert abs(_dominant_hz(x, heard.rate) - 440.0) < 5.0  # the voice that was sent, through Opus both ways
    assert np.sqrt(np.mean(x ** 2)) > 0.1
    client_loop.run(rs.close())
