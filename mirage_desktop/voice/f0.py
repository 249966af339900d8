"""F0 estimation on 16 kHz audio with pyworld (harvest, dio+stonemask) and measurement helpers.

RMVPE (an ONNX model) lives in :mod:`.rvc` and returns the same frame layout: one value per
``hop`` samples, 0.0 where unvoiced.
"""

from __future__ import annotations

import numpy as np

from ..errors import MirageError
from . import SAMPLE_RATE

F0_METHODS = ("rmvpe", "harvest", "dio")
F0_FLOOR = 50.0
F0_CEIL = 1100.0


def world_f0(x: np.ndarray, method: str = "dio", sr: int = SAMPLE_RATE, frame_period_ms: float = 10.0,
             f0_floor: float = F0_FLOOR, f0_ceil: float = F0_CEIL) -> tuple[np.ndarray, np.ndarray]:
    """Return (f0 [frames], time axis [frames]) using pyworld; 0.0 = unvoiced."""
    from ._pyworld import load

    pw = load()
    xd = np.ascontiguousarray(x, dtype=np.float64)
    if method == "harvest":
        f0, t = pw.harvest(xd, sr, f0_floor=f0_floor, f0_ceil=f0_ceil, frame_period=frame_period_ms)
    elif method == "dio":
        f0, t = pw.dio(xd, sr, f0_floor=f0_floor, f0_ceil=f0_ceil, frame_period=frame_period_ms)
        f0 = pw.stonemask(xd, f0, t, sr)
    else:
        raise MirageError(f"unknown F0 method {method!r}", f"use one of: {', '.join(F0_METHODS)}")
    return f0, t


def median_f0(x: np.ndarray, sr: int = SAMPLE_RATE, method: str = "harvest") -> float:
    """Median F0 (Hz) over voiced frames; 0.0 if nothing is voiced. Used by tests and the bench."""
    f0, _ = world_f0(np.asarray(x, dtype=np.float64), method=method, sr=sr, frame_period_ms=5.0)
    voiced = f0[f0 > 0]
    return float(np.median(voiced)) if voiced.size else 0.0


def harmonic_signal(f0: float, seconds: float, sr: int = SAMPLE_RATE, n_harmonics: int = 12,
                    amplitude: float = 0.3, vibrato: float = 0.0) -> np.ndarray:
    """A voice-like harmonic test tone with a known F0 (1/k amplitudes, formant-ish tilt)."""
    t = np.arange(int(seconds * sr)) / sr
    inst = f0 * (1.0 + vibrato * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(inst) / sr
    y = np.zeros_like(t)
    for k in range(1, n_harmonics + 1):
        if k * f0 * (1 + vibrato) >= sr / 2:
            break
        y += np.sin(k * phase) / k
    y *= amplitude / np.max(np.abs(y))
    return y.astype(np.float32)
