"""RVC voice conversion from user-supplied ONNX models: content encoder, synthesizer, RMVPE.

Signatures assumed (those of RVC-Project's ``infer/modules/onnx/export.py`` and
``infer/lib/infer_pack/onnx_inference.py``, and of the widely shared ``vec-768-layer-12.onnx``
and ``rmvpe.onnx``). Input and output *names* are read from the model, only their order and
shapes matter:

Content encoder (ContentVec / HuBERT), e.g. ``vec-768-layer-12.onnx``
    input 0  ``source``  float32 [1, 1, T]          16 kHz waveform
    output 0 ``embed``   float32 [1, T', C]         T' ≈ T / 320 (20 ms frames), C = 768 (v2) or 256 (v1)
    Frames are repeated x2 (→ 10 ms, N = 2·T') exactly as RVC does before the synthesizer.

Synthesizer (``export_onnx``: input_names phone, phone_lengths, pitch, pitchf, ds, rnd; output audio)
    phone          float32 [1, N, C]
    phone_lengths  int64   [1]          = N
    pitch          int64   [1, N]       coarse F0: mel-scaled to 1..255 (1 = unvoiced)
    pitchf         float32 [1, N]       F0 in Hz (0 = unvoiced), after the pitch shift
    ds             int64   [1]          speaker id
    rnd            float32 [1, 192, N]  standard normal noise
    output ``audio`` float32 [1, 1, N·hop] at the model's rate (hop = rate / 100); the model rate
    is deduced from the output length (40 kHz → 400 samples per frame).

RMVPE, e.g. ``rmvpe.onnx`` (mel in, salience out)
    input 0   float32 [1, 128, F]   log-mel: 16 kHz, n_fft = win = 1024, hop 160, 128 mels 30–8000 Hz
                                     (HTK mel scale, Slaney area norm), F padded to a multiple of 32
    output 0  float32 [1, F, 360]   pitch salience over 360 bins of 20 cents from 1997.38 cents;
                                     decoded by a local weighted average of 9 bins around the argmax,
                                     f0 = 10·2^(cents/1200), unvoiced where the peak ≤ threshold (0.03).
    A waveform variant is also accepted: input 0 float32 [1, T] (+ optional ``threshold`` float32
    [1] or scalar) → output 0 ``pitchf`` float32 [1, F] in Hz (+ optional ``uv``).

Not implemented: FAISS index retrieval (``index_rate``) — the synthesizer gets the encoder
features as they are.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..config import F0_METHODS
from ..errors import MirageError, ModelError
from . import SAMPLE_RATE
from .checks import _Stage, check_pitch

log = logging.getLogger(__name__)

F0_MIN, F0_MAX = 50.0, 1100.0
F0_MEL_MIN = 1127.0 * np.log(1.0 + F0_MIN / 700.0)
F0_MEL_MAX = 1127.0 * np.log(1.0 + F0_MAX / 700.0)
ENCODER_HOP = 320  # 20 ms at 16 kHz
FRAME_HOP = 160  # 10 ms: synthesizer / F0 frames


def _session(path: str | Path, what: str):
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} model not found: {path}", "pass the path of your .onnx file")
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # the voice thread shares the CPU with video
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"cannot load {what} model {path.name}: {' '.join(str(exc).split())[:200]}",
                         "check that the file is a complete ONNX export") from exc


def coarse_pitch(f0: np.ndarray) -> np.ndarray:
    """RVC's coarse pitch: mel-scaled F0 to 1..255 integers (1 = unvoiced)."""
    mel = 1127.0 * np.log(1.0 + f0 / 700.0)
    mel = np.where(mel > 0, (mel - F0_MEL_MIN) * 254.0 / (F0_MEL_MAX - F0_MEL_MIN) + 1.0, mel)
    mel = np.clip(mel, 1.0, 255.0)
    return np.rint(mel).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# RMVPE
def _hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sr: int = 16000, n_fft: int = 1024, n_mels: int = 128, fmin: float = 30.0,
                   fmax: float = 8000.0) -> np.ndarray:
    """librosa.filters.mel(htk=True, norm='slaney') re-done in numpy: [n_mels, n_fft/2+1]."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel_htk(fmin), _hz_to_mel_htk(fmax), n_mels + 2)
    hz = _mel_to_hz_htk(mel_pts)
    fdiff = np.diff(hz)
    ramps = hz[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (hz[2: n_mels + 2] - hz[:n_mels])
    return (weights * enorm[:, None]).astype(np.float32)


class Rmvpe:
    """RMVPE F0 from an ONNX model (mel-in/salience-out, or waveform-in/pitchf-out)."""

    N_FFT, HOP, N_MELS = 1024, 160, 128

    def __init__(self, path: str | Path, threshold: float = 0.03):
        self.session = _session(path, "RMVPE")
        self.threshold = float(threshold)
        ins = self.session.get_inputs()
        shape = ins[0].shape
        self.mode = "mel" if len(shape) == 3 else "waveform"
        if self.mode == "mel" and isinstance(shape[1], int) and shape[1] != self.N_MELS:
            raise ModelError(f"RMVPE model expects {shape[1]} mel bins, not 128",
                             "use an RMVPE export with a [1, 128, frames] input")
        self.input_names = [i.name for i in ins]
        self.mel_basis = mel_filterbank(SAMPLE_RATE, self.N_FFT, self.N_MELS, 30.0, 8000.0)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.N_FFT) / self.N_FFT)).astype(np.float32)
        cents = 20.0 * np.arange(360) + 1997.3794084376191
        self.cents = np.pad(cents, (4, 4))

    def log_mel(self, x: np.ndarray) -> np.ndarray:
        pad = self.N_FFT // 2
        xp = np.pad(np.asarray(x, dtype=np.float32), (pad, pad), mode="reflect")
        n_frames = 1 + (xp.size - self.N_FFT) // self.HOP
        idx = np.arange(self.N_FFT)[None, :] + self.HOP * np.arange(n_frames)[:, None]
        spec = np.abs(np.fft.rfft(xp[idx] * self.window, axis=1)).T  # [513, F]
        return np.log(np.maximum(self.mel_basis @ spec, 1e-5)).astype(np.float32)

    def decode(self, salience: np.ndarray) -> np.ndarray:
        """salience [F, 360] → f0 [F] Hz (0 = unvoiced)."""
        center = np.argmax(salience, axis=1) + 4
        sal = np.pad(salience, ((0, 0), (4, 4)))
        idx = center[:, None] + np.arange(-4, 5)[None, :]
        s = np.take_along_axis(sal, idx, axis=1)
        c = self.cents[idx]
        cents = (s * c).sum(1) / np.maximum(s.sum(1), 1e-9)
        cents[sal.max(1) <= self.threshold] = 0.0
        f0 = 10.0 * 2.0 ** (cents / 1200.0)
        f0[f0 <= 10.0 + 1e-6] = 0.0
        return f0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """16 kHz audio → F0 per 10 ms frame (1 + len // 160 frames)."""
        if self.mode == "mel":
            mel = self.log_mel(x)
            n = mel.shape[1]
            padded = 32 * ((n - 1) // 32 + 1)
            mel = np.pad(mel, ((0, 0), (0, padded - n)))[None]
            hidden = self.session.run(None, {self.input_names[0]: mel})[0]
            return self.decode(np.asarray(hidden[0, :n], dtype=np.float32))
        feed = {self.input_names[0]: np.asarray(x, dtype=np.float32)[None]}
        for name in self.input_names[1:]:
            if "thre" in name:
                feed[name] = np.array([self.threshold], dtype=np.float32)
        f0 = np.asarray(self.session.run(None, feed)[0], dtype=np.float64).reshape(-1)
        return np.where(f0 > 0, f0, 0.0)


# ---------------------------------------------------------------------------------------------
class RvcModel:
    """Loads and runs the content encoder and the synthesizer."""

    def __init__(self, synthesizer: str | Path, encoder: str | Path):
        self.synth = _session(synthesizer, "RVC synthesizer")
        self.encoder = _session(encoder, "content encoder")
        names = [i.name for i in self.synth.get_inputs()]
        if len(names) != 6:
            raise ModelError(f"RVC synthesizer has {len(names)} inputs, expected 6 "
                             "(phone, phone_lengths, pitch, pitchf, ds, rnd)",
                             "export it with RVC's export_onnx (a model with F0)")
        self.synth_inputs = names
        phone_shape = self.synth.get_inputs()[0].shape
        self.channels = phone_shape[2] if isinstance(phone_shape[2], int) else None
        enc_in = self.encoder.get_inputs()
        if len(enc_in[0].shape) != 3:
            raise ModelError("content encoder input must be [1, 1, samples]",
                             "use a ContentVec/HuBERT ONNX export such as vec-768-layer-12.onnx")
        self.encoder_input = enc_in[0].name

    def encode(self, x16k: np.ndarray) -> np.ndarray:
        """16 kHz audio → features [1, N, C] at 10 ms per frame (encoder frames repeated x2)."""
        feats = self.encoder.run(None, {self.encoder_input: np.asarray(x16k, np.float32)[None, None]})[0]
        feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim != 3:
            raise ModelError(f"content encoder returned shape {feats.shape}, expected [1, frames, C]",
                             "use a ContentVec/HuBERT ONNX export")
        if self.channels and feats.shape[2] != self.channels and feats.shape[1] == self.channels:
            feats = feats.transpose(0, 2, 1)
        if self.channels and feats.shape[2] != self.channels:
            raise ModelError(f"content encoder gives {feats.shape[2]} channels, synthesizer wants {self.channels}",
                             "use vec-768 for v2 models and vec-256 for v1 models")
        return np.repeat(feats, 2, axis=1)

    def synthesize(self, feats: np.ndarray, f0: np.ndarray, speaker: int, rng: np.random.Generator) -> np.ndarray:
        n = feats.shape[1]
        f0 = np.asarray(f0, dtype=np.float64)[:n]
        if f0.size < n:
            f0 = np.pad(f0, (0, n - f0.size), mode="edge" if f0.size else "constant")
        feed = dict(zip(self.synth_inputs, [
            feats.astype(np.float32),
            np.array([n], dtype=np.int64),
            coarse_pitch(f0)[None],
            f0.astype(np.float32)[None],
            np.array([speaker], dtype=np.int64),
            rng.standard_normal((1, 192, n)).astype(np.float32),
        ]))
        audio = self.synth.run(None, feed)[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)


class RvcConverter:
    """Converter (see :mod:`.converters`) running an RVC ONNX model on each chunk's window."""

    name = "rvc"

    def __init__(self, model: str | Path, encoder: str | Path, rmvpe: str | Path | None = None,
                 f0_method: str = "rmvpe", pitch: float = 0.0, speaker: int = 0, context_ms: float = 400.0):
        self.model = RvcModel(model, encoder)
        self.rmvpe = Rmvpe(rmvpe) if rmvpe else None
        self._lock = threading.Lock()
        self.pitch = 0.0
        self.f0_method = "rmvpe"
        self.set_option("f0_method", f0_method)
        self.set_option("pitch", pitch)
        self.speaker = int(speaker)
        self.context = int(SAMPLE_RATE * context_ms / 1000.0)
        self.model_sr: int | None = None
        self._rng = np.random.default_rng(0)
        self._check_at_load()

    def _check_at_load(self) -> None:
        """One conversion of 0.2 s of quiet noise: a wrong-signature encoder, synthesizer or RMVPE is
        refused now, naming the shapes, instead of failing on every chunk of a call."""
        x = (np.random.default_rng(1).standard_normal(SAMPLE_RATE // 5) * 1e-3).astype(np.float32)
        methods = ["rmvpe"] if self.rmvpe is not None else []
        try:
            for method in methods:
                f0 = np.asarray(self.rmvpe(x), np.float64)
                frames = 1 + x.size // FRAME_HOP
                if f0.ndim != 1 or not frames // 2 <= f0.size <= frames * 2 or not np.isfinite(f0).all():
                    raise ModelError(f"the RMVPE model gave {f0.size} F0 values for {frames} frames",
                                     "use an RMVPE export with a [1, 128, frames] mel input and a [1, frames, 360] "
                                     "output")
            feats = self.model.encode(x)
            audio = self.model.synthesize(feats, np.zeros(feats.shape[1]), self.speaker, self._rng)
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime's errors: wrong ranks, names, types
            raise ModelError(f"the RVC models failed a test run ({' '.join(str(exc).split())[:200]})",
                             "export the synthesizer with RVC's export_onnx and use the matching content "
                             "encoder (vec-768 for v2, vec-256 for v1)") from None
        per_frame = audio.size / max(1, feats.shape[1])
        if audio.size == 0 or not np.isfinite(audio).all() or not 80 <= per_frame <= 960:
            raise ModelError(f"the RVC synthesizer gave {audio.size} samples for {feats.shape[1]} frames "
                             f"(expected 10 ms of audio per frame at 8-96 kHz)",
                             "export the synthesizer with RVC's export_onnx (output audio [1, 1, frames x hop])")

    @classmethod
    def from_settings(cls, settings, pitch: float = 0.0, f0_method: str = "rmvpe", **over) -> "RvcConverter":
        model = over.get("model") or getattr(settings, "voice_model", "")
        encoder = over.get("encoder") or getattr(settings, "voice_encoder", "")
        rmvpe = over.get("rmvpe") or getattr(settings, "voice_rmvpe", "")
        if not model or not encoder:
            raise ModelError("the RVC converter needs a synthesizer and a content encoder ONNX model",
                             "pass --model model.onnx --encoder vec-768-layer-12.onnx")
        return cls(model, encoder, rmvpe, f0_method=f0_method, pitch=pitch,
                   speaker=int(over.get("speaker", getattr(settings, "voice_speaker", 0))))

    def set_option(self, name: str, value: Any) -> None:
        with self._lock:
            if name == "pitch":
                self.pitch = check_pitch(value)
            elif name == "f0_method":
                if value == "rmvpe" and self.rmvpe is None:
                    raise ModelError("F0 method rmvpe needs an RMVPE model",
                                     "pass --rmvpe rmvpe.onnx or use --f0 harvest")
                if value not in F0_METHODS:
                    raise MirageError(f"unknown F0 method {value!r}", f"use {', '.join(F0_METHODS)}")
                self.f0_method = value
            elif name == "speaker":
                self.speaker = int(value)
            elif name in ("formant", "preset"):
                log.info("voice: %s is not used by the RVC converter", name)
            else:
                raise MirageError(f"unknown voice option {name!r}", "use pitch, f0_method or speaker")

    def options(self) -> dict:
        return {"pitch": self.pitch, "f0_method": self.f0_method, "speaker": self.speaker,
                "model_sr": self.model_sr}

    def f0(self, x: np.ndarray, n_frames: int, method: str) -> np.ndarray:
        if method == "rmvpe":
            f0 = self.rmvpe(x)
        else:
            from .f0 import world_f0

            f0, _ = world_f0(x, method=method, frame_period_ms=10.0)
        f0 = np.asarray(f0, dtype=np.float64)
        if f0.size >= n_frames:
            return f0[:n_frames]
        return np.pad(f0, (0, n_frames - f0.size), mode="edge" if f0.size else "constant")

    def convert(self, window: np.ndarray, tail: int, timings: dict) -> np.ndarray:
        with self._lock:
            pitch, method, speaker = self.pitch, self.f0_method, self.speaker
        n_in = window.size
        # pad the end so the encoder's last frames cover the tail; trimmed afterwards
        pad = (-n_in) % ENCODER_HOP + 2 * ENCODER_HOP
        x = np.pad(np.asarray(window, np.float32), (0, pad), mode="reflect")
        with _Stage(timings, "encode"):
            feats = self.model.encode(x)
        n = feats.shape[1]
        with _Stage(timings, "f0"):
            f0 = self.f0(x, n, method) * (2.0 ** (pitch / 12.0))
        with _Stage(timings, "convert"):
            audio = self.model.synthesize(feats, f0, speaker, self._rng)
        with _Stage(timings, "post"):
            sr = int(round(audio.size * 100.0 / n))  # samples per 10 ms frame x 100
            self.model_sr = sr
            from .resample import resample_block

            y = resample_block(audio, sr, SAMPLE_RATE) if sr != SAMPLE_RATE else audio
            y = y[:n_in]
            if y.size < n_in:
                y = np.pad(y, (0, n_in - y.size))
        return y[-tail:].astype(np.float32)
