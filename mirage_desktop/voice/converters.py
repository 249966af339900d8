"""Voice converters behind one contract, and the built-in WORLD voice changer with presets.

Contract (checked by :func:`check_converter`): a converter has

- ``name`` (str) and ``context`` (int): samples of past audio it wants before the part it must
  produce (F0 history, model receptive field);
- ``convert(window: np.ndarray, tail: int, timings: dict) -> np.ndarray``: ``window`` is 16 kHz
  mono float32; it returns the converted last ``tail`` samples, time-aligned with
  ``window[-tail:]``. It adds milliseconds per stage to ``timings`` under ``encode``, ``f0``,
  ``convert`` and ``post``;
- ``set_option(name, value)`` for live changes (``pitch``, ``formant``, ``preset``) and
  ``options() -> dict``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..config import F0_METHODS, FORMANT_RANGE, VOICE_CONVERTERS, VOICE_PRESETS
from ..errors import MirageError
from . import SAMPLE_RATE
from .checks import _Stage, check_pitch  # noqa: F401  (shared with the RVC converter)

# name -> (pitch semitones, formant ratio, f0 mode); f0 mode: "shift", "monotone:<Hz>", "whisper"
PRESETS: dict[str, tuple[float, float, str]] = {
    "neutral": (0.0, 1.0, "shift"),
    "deeper": (-4.0, 0.90, "shift"),
    "higher": (4.0, 1.10, "shift"),
    "feminine": (5.0, 1.15, "shift"),
    "masculine": (-5.0, 0.87, "shift"),
    "chipmunk": (9.0, 1.30, "shift"),
    "giant": (-9.0, 0.75, "shift"),
    "robot": (0.0, 1.0, "monotone:110"),
    "whisper": (0.0, 1.0, "whisper"),
}
assert tuple(PRESETS) == VOICE_PRESETS, "config.VOICE_PRESETS names the presets defined here"


def check_converter(obj: Any) -> Any:
    missing = [n for n in ("name", "context", "convert", "set_option", "options") if not hasattr(obj, n)]
    if missing:
        raise MirageError(f"voice converter {type(obj).__name__} lacks {', '.join(missing)}",
                          "implement the converter contract in mirage_desktop/voice/converters.py")
    return obj



def check_formant(value: Any) -> float:
    """A formant ratio, 0.5..2.0, or a one-line error."""
    v = float(value)
    if not FORMANT_RANGE[0] <= v <= FORMANT_RANGE[1]:
        raise MirageError(f"formant {v:g} is out of range", "use 0.5..2.0 (1.0 = unchanged)")
    return v


def check_option(name: str, value: Any) -> None:
    """Checks that hold for every converter (a value stored in the settings must let any converter
    start later); each converter's ``set_option`` adds its own. Raises MirageError."""
    try:
        if name == "pitch":
            check_pitch(value)
        elif name == "formant":
            check_formant(value)
        elif name == "preset":
            if str(value).lower() not in PRESETS:
                raise MirageError(f"unknown voice preset {value!r}", f"use one of: {', '.join(PRESETS)}")
        elif name == "f0_method":
            if value not in F0_METHODS:
                raise MirageError(f"unknown F0 method {value!r}", f"use {', '.join(F0_METHODS)}")
        elif name == "speaker":
            int(value)
    except (TypeError, ValueError) as exc:
        raise MirageError(f"bad value {value!r} for voice option {name}: {exc}", "pass a number") from None


class PassThrough:
    name = "passthrough"
    context = 0

    def convert(self, window: np.ndarray, tail: int, timings: dict) -> np.ndarray:
        return np.asarray(window[-tail:], dtype=np.float32)

    def set_option(self, name: str, value: Any) -> None:
        pass

    def options(self) -> dict:
        return {}


class WorldConverter:
    """Pitch and formant shift with WORLD analysis/synthesis (pyworld); no model download.

    Per chunk: F0 by dio+stonemask (or harvest) over the whole window (context gives it
    history), spectral envelope (CheapTrick) and aperiodicity (D4C) only for the frames that
    are synthesised (the tail plus a few warm-up frames), F0 scaled by 2^(pitch/12), envelope
    frequency axis warped by ``formant`` (1.1 = formants 10 % up), then WORLD synthesis.
    """

    name = "world"

    def __init__(self, pitch: float = 0.0, formant: float = 1.0, preset: str | None = None,
                 f0_method: str = "dio", frame_period_ms: float = 5.0, context_ms: float = 96.0):
        from ._pyworld import load

        self._pw = load()
        if f0_method not in ("dio", "harvest"):
            raise MirageError(f"F0 method {f0_method!r} is not available for the built-in converter",
                              "use --f0 dio or --f0 harvest (rmvpe needs an RVC model)")
        self.f0_method = f0_method
        self.frame_period = float(frame_period_ms)
        self.hop = int(round(SAMPLE_RATE * self.frame_period / 1000.0))
        self.context = int(SAMPLE_RATE * context_ms / 1000.0)
        self.fft_size = self._pw.get_cheaptrick_fft_size(SAMPLE_RATE, 71.0)
        self._lock = threading.Lock()
        self.pitch, self.formant, self.f0_mode, self.preset = 0.0, 1.0, "shift", "custom"
        if preset:
            self.set_option("preset", preset)
        if pitch:
            self.set_option("pitch", pitch)
        if formant != 1.0:
            self.set_option("formant", formant)

    # --- options -----------------------------------------------------------
    def set_option(self, name: str, value: Any) -> None:
        with self._lock:
            if name == "pitch":
                self.pitch, self.preset = check_pitch(value), "custom"
            elif name == "formant":
                self.formant, self.preset = check_formant(value), "custom"
            elif name == "preset":
                key = str(value).lower()
                if key not in PRESETS:
                    raise MirageError(f"unknown voice preset {value!r}", f"use one of: {', '.join(PRESETS)}")
                self.pitch, self.formant, self.f0_mode = PRESETS[key]
                self.preset = key
            elif name == "f0_method":
                if value not in ("dio", "harvest"):
                    raise MirageError(f"F0 method {value!r} is not available for the built-in converter",
                                      "use dio or harvest")
                self.f0_method = value
            else:
                raise MirageError(f"unknown voice option {name!r}", "use pitch, formant, preset or f0_method")

    def options(self) -> dict:
        return {"pitch": self.pitch, "formant": self.formant, "preset": self.preset,
                "f0_mode": self.f0_mode, "f0_method": self.f0_method}

    # --- processing --------------------------------------------------------
    def _warp(self, env: np.ndarray, ratio: float) -> np.ndarray:
        """new(f) = old(f / ratio) along the frequency axis, per frame (linear interpolation)."""
        if abs(ratio - 1.0) < 1e-6:
            return env
        bins = env.shape[1]
        src = np.arange(bins) / ratio
        src = np.clip(src, 0, bins - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, bins - 1)
        w = src - lo
        return env[:, lo] * (1.0 - w) + env[:, hi] * w

    def convert(self, window: np.ndarray, tail: int, timings: dict) -> np.ndarray:
        pw = self._pw
        with self._lock:
            pitch, formant, f0_mode, method = self.pitch, self.formant, self.f0_mode, self.f0_method
        x = np.ascontiguousarray(window, dtype=np.float64)
        fp = self.frame_period
        with _Stage(timings, "f0"):
            if method == "harvest":
                f0, t = pw.harvest(x, SAMPLE_RATE, f0_floor=50.0, f0_ceil=1100.0, frame_period=fp)
            else:
                f0, t = pw.dio(x, SAMPLE_RATE, f0_floor=50.0, f0_ceil=1100.0, frame_period=fp)
                f0 = pw.stonemask(x, f0, t, SAMPLE_RATE)
        # frames to synthesise: from a few frames before the tail to the end
        start_sample = x.size - tail
        first = max(0, start_sample // self.hop - 4)
        f0s, ts = np.ascontiguousarray(f0[first:]), np.ascontiguousarray(t[first:])
        with _Stage(timings, "encode"):
            sp = pw.cheaptrick(x, f0s, ts, SAMPLE_RATE, fft_size=self.fft_size)
            ap = pw.d4c(x, f0s, ts, SAMPLE_RATE, fft_size=self.fft_size)
        with _Stage(timings, "convert"):
            if f0_mode == "whisper":
                f0n = np.zeros_like(f0s)
            elif f0_mode.startswith("monotone:"):
                f0n = np.where(f0s > 0, float(f0_mode.split(":", 1)[1]) * 2.0 ** (pitch / 12.0), 0.0)
            else:
                f0n = f0s * (2.0 ** (pitch / 12.0))
            if formant != 1.0:
                sp = self._warp(sp, formant)
                ap = self._warp(ap, formant)
            y = pw.synthesize(np.ascontiguousarray(f0n), np.ascontiguousarray(sp),
                              np.ascontiguousarray(ap), SAMPLE_RATE, fp)
        with _Stage(timings, "post"):
            offset = start_sample - first * self.hop
            out = y[offset: offset + tail]
            if out.size < tail:
                out = np.concatenate([out, np.zeros(tail - out.size)])
        return out.astype(np.float32)


CONVERTERS = VOICE_CONVERTERS


def make_converter(kind: str, settings=None, **overrides):
    """Build a converter by name from settings (``voice_pitch``, ``voice_formant``, ``voice_preset``,
    ``voice_f0_method``; RVC: ``voice_model``, ``voice_encoder``, ``voice_rmvpe``, ``voice_speaker``)."""
    pitch = float(overrides.get("pitch", getattr(settings, "voice_pitch", 0.0) if settings else 0.0))
    formant = float(overrides.get("formant", getattr(settings, "voice_formant", 1.0) if settings else 1.0))
    preset = overrides.get("preset", getattr(settings, "voice_preset", "") or None)
    f0_method = overrides.get("f0_method", getattr(settings, "voice_f0_method", "") or None)
    if kind == "passthrough":
        return PassThrough()
    if kind == "world":
        conv = WorldConverter(preset=preset, f0_method=f0_method or "dio")
        if pitch:
            conv.set_option("pitch", pitch)
        if formant != 1.0:
            conv.set_option("formant", formant)
        return conv
    if kind == "rvc":
        from .rvc import RvcConverter

        return RvcConverter.from_settings(settings, pitch=pitch, f0_method=f0_method or "rmvpe", **{
            k: v for k, v in overrides.items() if k in ("model", "encoder", "rmvpe", "speaker")})
    raise MirageError(f"unknown voice converter {kind!r}", f"use one of: {', '.join(CONVERTERS)}")
