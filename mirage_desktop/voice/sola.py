"""SOLA (synchronized overlap-add) between converted chunks, so chunk boundaries do not click.

Each chunk arrives as ``block + crossfade + search`` samples. We look, within the first
``search`` samples, for the offset where the chunk best matches the tail kept from the previous
chunk (normalised cross-correlation), cut the chunk there, crossfade the first ``crossfade``
samples with the kept tail (equal-power sin^2/cos^2 windows) and keep the next tail.
"""

from __future__ import annotations

import numpy as np


class SolaCrossfader:
    def __init__(self, crossfade: int, search: int):
        self.crossfade = int(crossfade)
        self.search = int(search)
        t = np.linspace(0.0, 1.0, self.crossfade, dtype=np.float64)
        self.fade_in = np.sin(0.5 * np.pi * t) ** 2
        self.fade_out = 1.0 - self.fade_in
        self.tail: np.ndarray | None = None
        self.last_offset = 0

    def reset(self) -> None:
        self.tail = None

    def need(self, block: int) -> int:
        return block + self.crossfade + self.search

    def process(self, chunk: np.ndarray, block: int) -> np.ndarray:
        """``chunk``: ``block + crossfade + search`` samples → ``block`` samples out."""
        chunk = np.asarray(chunk, dtype=np.float64)
        x, s = self.crossfade, self.search
        if chunk.size != block + x + s:
            raise ValueError(f"SOLA expects {block + x + s} samples, got {chunk.size}")
        offset = 0
        if self.tail is not None and s > 0 and np.any(self.tail):
            region = chunk[: x + s]
            nom = np.correlate(region, self.tail, mode="valid")  # s + 1 values
            energy = np.concatenate([[0.0], np.cumsum(region * region)])
            den = np.sqrt(energy[x:] - energy[:-x] + 1e-8)
            offset = int(np.argmax(nom / den))
        self.last_offset = offset
        out = chunk[offset: offset + block + x].copy()
        if self.tail is not None:
            out[:x] = out[:x] * self.fade_in + self.tail * self.fade_out
        self.tail = out[block: block + x].copy()
        return out[:block].astype(np.float32)
