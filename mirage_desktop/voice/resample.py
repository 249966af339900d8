"""Streaming polyphase resampler (windowed sinc), sample-continuous across blocks.

Output sample ``n`` is the band-limited value of the input at time ``n / sr_out`` exactly (no
phase shift); it can be produced once ``half`` further input samples have arrived, so the
resampler adds ``half / sr_in`` seconds of latency (:attr:`StreamResampler.delay_s`).
"""

from __future__ import annotations

import math

import numpy as np


class StreamResampler:
    def __init__(self, sr_in: int, sr_out: int, zero_crossings: int = 12, rolloff: float = 0.92):
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        g = math.gcd(self.sr_in, self.sr_out)
        self.up, self.down = self.sr_out // g, self.sr_in // g
        self.identity = self.sr_in == self.sr_out
        self._n_out = 0  # next output index
        if self.identity:
            self.half = 0
            return
        fc = 0.5 * min(self.sr_in, self.sr_out) * rolloff  # cutoff, Hz
        scale = 2.0 * fc / self.sr_in  # cutoff as a fraction of the input Nyquist... times 2
        self.half = int(math.ceil(zero_crossings / scale))  # half-length in input samples
        k = np.arange(2 * self.half)
        phases = np.arange(self.up)[:, None] / self.up
        tau = phases + self.half - 1 - k[None, :]  # distance (input samples) from the output time
        window = np.where(np.abs(tau) < self.half, 0.5 + 0.5 * np.cos(np.pi * tau / self.half), 0.0)
        self.table = (scale * np.sinc(scale * tau) * window).astype(np.float64)
        # start with ``half`` zeros of history so output 0 sits at input time 0
        self._hist = np.zeros(self.half, dtype=np.float64)
        self._base = -self.half  # absolute input index of _hist[0]
        self._n_in = 0  # input samples received

    @property
    def n_out(self) -> int:
        """Output samples produced so far."""
        return self._n_out

    @property
    def delay_s(self) -> float:
        return 0.0 if self.identity else self.half / self.sr_in

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self.identity:
            self._n_out += x.size
            return x.copy()
        self._hist = np.concatenate([self._hist, x.astype(np.float64)])
        self._n_in += x.size
        # output n needs input indices up to floor(n*down/up) + half
        last_ok = self._n_in - 1 - self.half
        if last_ok < 0:
            return np.zeros(0, dtype=np.float32)
        n_end = (last_ok * self.up) // self.down + 1
        if n_end <= self._n_out:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._n_out, n_end, dtype=np.int64)
        num = n * self.down
        i0 = num // self.up
        p = num % self.up
        idx = (i0 - self.half + 1 - self._base)[:, None] + np.arange(2 * self.half)[None, :]
        y = np.einsum("nk,nk->n", self._hist[idx], self.table[p])
        self._n_out = int(n_end)
        # keep what the next output needs
        next_first = (self._n_out * self.down) // self.up - self.half + 1
        cut = next_first - self._base
        if cut > 0:
            self._hist = self._hist[cut:]
            self._base += cut
        return y.astype(np.float32)


def resample_block(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """One-shot resampling of a whole buffer (scipy polyphase), for offline use."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(np.asarray(x, dtype=np.float64), sr_out // g, sr_in // g).astype(np.float32)
