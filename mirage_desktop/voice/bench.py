"""Benchmark: real-time factor (processing time / chunk duration) per converter at 192 ms chunks.

    python -m mirage_desktop.voice.bench [--seconds 10] [--block-ms 192] [--rvc-model M --rvc-encoder E [--rvc-rmvpe R]]

Input is espeak-ng speech when espeak-ng is installed (else a harmonic test signal), looped
to ``--seconds``. Without ``--rvc-model`` the RVC rows use the tiny synthetic ONNX models of
:mod:`mirage_desktop.testing.voice_models` — they time the RVC plumbing (encoder I/O, F0, resampling, SOLA), not a
real RVC network. Real-time control is off (fixed block, no fallback) so every chunk is the same size and
converted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import SAMPLE_RATE


def speech_sample(seconds: float) -> tuple[np.ndarray, str]:
    from .f0 import harmonic_signal

    exe = shutil.which("espeak-ng")
    if exe:
        with tempfile.TemporaryDirectory() as d:
            wav = Path(d) / "s.wav"
            text = ("The quick brown fox jumps over the lazy dog. Real time voice conversion needs "
                    "steady chunks, a calm crossfade and a quiet processor.")
            res = subprocess.run([exe, "-w", str(wav), "-s", "150", text], capture_output=True, timeout=30)
            if res.returncode == 0 and wav.exists():
                import soundfile as sf

                from .resample import resample_block

                x, sr = sf.read(str(wav), dtype="float32")
                x = resample_block(x if x.ndim == 1 else x.mean(1), sr, SAMPLE_RATE)
                x = 0.5 * x / (np.max(np.abs(x)) + 1e-9)
                reps = int(np.ceil(seconds * SAMPLE_RATE / x.size))
                return np.tile(x, reps)[: int(seconds * SAMPLE_RATE)], "espeak-ng speech"
    return harmonic_signal(150.0, seconds, vibrato=0.03), "harmonic 150 Hz"


def bench_converter(conv, x: np.ndarray, block_ms: float) -> dict:
    from ..metrics import Metrics
    from .engine import VoiceEngine

    m = Metrics()
    eng = VoiceEngine(conv, m, block_ms=block_ms, adapt=False, fallback=False, silence_db=-200.0)
    ratios = []
    eng.push(x)
    while eng.ready():
        eng.step()
        ratios.append(eng.last_ratio)
    ratios = np.array(ratios[1:])  # the first chunk warms caches up
    stages = {k.split(".", 1)[1]: v["p50"] for k, v in m.snapshot()["stages"].items()
              if k in ("voice.encode", "voice.f0", "voice.convert", "voice.post") and v["count"]}
    p50, p95, p99 = np.percentile(ratios, [50, 95, 99])
    return {"chunks": int(ratios.size), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "accept": float(np.mean(ratios < 0.65)), "stages": stages,
            "algorithmic_latency_ms": eng.algorithmic_latency_ms()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mirage_desktop.voice.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--block-ms", type=float, default=192.0)
    ap.add_argument("--rvc-model")
    ap.add_argument("--rvc-encoder")
    ap.add_argument("--rvc-rmvpe")
    args = ap.parse_args(argv)

    from .converters import PassThrough, WorldConverter
    from .rvc import RvcConverter

    x, what = speech_sample(args.seconds)
    tmp = None
    if args.rvc_model:
        paths = {"model": args.rvc_model, "encoder": args.rvc_encoder, "rmvpe": args.rvc_rmvpe}
        rvc_label = "rvc"
    else:
        from ..testing.voice_models import build_all

        tmp = tempfile.TemporaryDirectory()
        paths = build_all(Path(tmp.name))
        rvc_label = "rvc(synthetic)"
    cases = [
        ("passthrough", lambda: PassThrough()),
        ("world dio +4 st, formant 1.1", lambda: WorldConverter(pitch=4, formant=1.1, f0_method="dio")),
        ("world harvest +4 st", lambda: WorldConverter(pitch=4, f0_method="harvest")),
        (f"{rvc_label} f0=dio", lambda: RvcConverter(paths["model"], paths["encoder"], paths.get("rmvpe"), "dio", 4)),
        (f"{rvc_label} f0=harvest",
         lambda: RvcConverter(paths["model"], paths["encoder"], paths.get("rmvpe"), "harvest", 4)),
    ]
    if paths.get("rmvpe"):
        cases.append((f"{rvc_label} f0=rmvpe",
                      lambda: RvcConverter(paths["model"], paths["encoder"], paths["rmvpe"], "rmvpe", 4)))
    print(f"input: {what}, {args.seconds:.0f} s; chunk {args.block_ms:.0f} ms at 16 kHz; "
          f"RTF = processing time / chunk duration (accepted below 0.65)")
    print(f"{'converter':<32}{'chunks':>7}{'RTF P50':>9}{'P95':>7}{'P99':>7}{'accept':>8}   stage P50 ms")
    alg = None
    for label, make in cases:
        r = bench_converter(make(), x, args.block_ms)
        alg = r["algorithmic_latency_ms"]
        stages = " ".join(f"{k}={v:.1f}" for k, v in r["stages"].items())
        print(f"{label:<32}{r['chunks']:>7}{r['p50']:>9.3f}{r['p95']:>7.3f}{r['p99']:>7.3f}"
              f"{r['accept']:>8.0%}   {stages}")
    print(f"algorithmic latency inside the engine (block + crossfade + SOLA search): {alg:.0f} ms "
          f"(+ resampler and device latency at run time)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
