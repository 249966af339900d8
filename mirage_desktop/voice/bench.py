"""Benchmarks: real-time factor per converter, and end-to-end latency through real PulseAudio devices.

    python -m mirage_desktop.voice.bench [--seconds 10] [--block-ms 192] [--rvc-model M --rvc-encoder E [--rvc-rmvpe R]]
    python -m mirage_desktop.voice.bench --e2e [--converter world] [--blocks all|32,64,...] [--bursts 30]

``--e2e`` (needs a PulseAudio server; creates and removes two null sinks): for each block size the
real-time controller can choose (block adaptation off, so each is held), bursts of a tone are played
into a null sink, the pipeline converts its monitor into a second null sink, and both monitors are
recorded the same way: the onset-to-onset time is the latency from the pipeline's input device to
its output device. Printed with the pipeline's own measured latency (``voice.latency_e2e``) and where
it goes (block, SOLA, resamplers, device buffers, the output queue).

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
    ap.add_argument("--e2e", action="store_true", help="end-to-end latency through PulseAudio null sinks")
    ap.add_argument("--converter", default="world", help="--e2e: world or passthrough")
    ap.add_argument("--blocks", default="all", help="--e2e: block sizes in ms, or 'all' the controller can choose")
    ap.add_argument("--bursts", type=int, default=30, help="--e2e: timed tone bursts per block size")
    ap.add_argument("--device-block-ms", type=float, default=None, help="--e2e: PortAudio callback size")
    ap.add_argument("--output-periods", type=int, default=None,
                    help="--e2e: output device buffer in callbacks (default: the pipeline's OUTPUT_PERIODS)")
    ap.add_argument("--mode", choices=("voice", "lipsync"), default="voice",
                    help="--e2e: lipsync = the lip-sync microphone (unconverted, its own 20 ms block)")
    args = ap.parse_args(argv)
    if args.e2e:
        return e2e_main(args)

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



# --- end to end through real PulseAudio devices --------------------------------------------------
E2E_SR = 48000


class _Tap:
    """A PortAudio stream on a PulseAudio device that plays ``signal`` in a loop (output) or records
    (input), logging each callback's frame count, time and status flag."""

    def __init__(self, dev, signal=None, device_block=480):
        import threading

        from .audio_io import open_stream

        self.sig, self.pos, self.n = signal, 0, 0
        self.parts: list[np.ndarray] = []
        self.log: list[tuple[int, float, bool]] = []  # (frames so far, perf_counter, status) per callback
        self.cond = threading.Condition()
        self.stream = open_stream(dev, E2E_SR, device_block, self._cb, channels=1)
        self.latency = float(self.stream.latency)

    def _cb(self, *args) -> None:
        import time

        now = time.perf_counter()
        if self.sig is None:  # input: (indata, frames, time_info, status)
            indata, frames, _, status = args
            with self.cond:
                self.parts.append(indata[:, 0].copy())
                self.n += frames
                self.log.append((self.n, now, bool(status)))
                self.cond.notify_all()
            return
        outdata, frames = args[0], args[1]
        idx = (self.pos + np.arange(frames)) % self.sig.size
        outdata[:, 0] = self.sig[idx]
        self.pos += frames

    def capture_time(self, sample: int, window_s: float = 1.0) -> float | None:
        """Capture time of recorded ``sample`` (perf_counter): callbacks are never early, so over
        the callbacks within ``window_s`` of it the earliest ``time - frames/sr`` is on time. None
        when a callback in that window reported lost input (the frame count no longer maps)."""
        with self.cond:
            log = list(self.log)
        n = np.array([e[0] for e in log], dtype=np.float64)
        t = np.array([e[1] for e in log])
        bad = np.array([e[2] for e in log])
        near = np.abs(n - sample) <= window_s * E2E_SR
        if not near.any() or bad[near].any():
            return None
        return float(np.min(t[near] - n[near] / E2E_SR)) + sample / E2E_SR - self.latency

    def audio(self) -> np.ndarray:
        with self.cond:
            return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)

    def wait_audio(self, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.n >= n, timeout)


def onsets(x: np.ndarray, sr: int = E2E_SR, thresh: float = 0.02, quiet_s: float = 0.1) -> np.ndarray:
    """Sample indices where the 1 ms envelope first exceeds ``thresh`` after ``quiet_s`` below it."""
    w = max(1, sr // 1000)
    env = np.convolve(np.abs(x), np.ones(w) / w, mode="same")
    above = np.flatnonzero(env > thresh)
    if above.size == 0:
        return above
    gaps = np.diff(above, prepend=-10 * sr)
    return above[gaps > quiet_s * sr]


def pair_onsets(t_in: np.ndarray, t_out: np.ndarray, period_s: float) -> np.ndarray:
    """Latency (s) of each output onset: the time since the latest input onset before it, when that
    is less than ``period_s`` (a burst whose input onset is not found is left out)."""
    lat = []
    for t in t_out:
        before = t_in[t_in < t]
        if before.size and t - before[-1] < period_s:
            lat.append(t - before[-1])
    return np.asarray(lat)


def burst_signal(period_s: float, burst_s: float, f0: float = 150.0) -> np.ndarray:
    from .f0 import harmonic_signal

    x = np.zeros(int(period_s * E2E_SR), dtype=np.float32)
    b = harmonic_signal(f0, burst_s, sr=E2E_SR).astype(np.float32)
    x[:b.size] = b
    return x


def breakdown(pipe) -> dict[str, float]:
    """Where the latency of a running pipeline goes (ms), from its status and metrics: the parts
    add up to its own measured latency but for the callback timing the stream clocks absorb."""
    st = pipe.status()
    m = pipe.metrics
    q = m.histogram("voice.out_queue_ms").summary()
    conv = m.histogram("voice.proc_converted_ms").summary()
    lat_in, lat_out = pipe.device_latencies_s()
    return {
        "block": st["block_ms"],
        "sola (crossfade + search)": st["crossfade_ms"] + st["search_ms"],
        "resamplers": pipe.resampler_delay_s() * 1000.0,
        "input device (reported)": lat_in * 1000.0,
        "output device (reported)": lat_out * 1000.0,
        "output queue P50 (processing + FIFO wait)": q["p50"] or 0.0,
        "  of it: converted block's processing P50": conv["p50"] or 0.0,
        "  of it: proc_ref + margin (schedule)": st["proc_ref_ms"] + st["output_margin_ms"],
    }


def e2e_run(block_ms: float, converter: str = "world", bursts: int = 30, period_s: float | None = None,
            burst_s: float = 0.15, pitch: float = 4.0, device_block_ms: float | None = None,
            timeout_s: float = 120.0, mode: str = "voice", target_s: float | None = None,
            sinks: str = "mirage_bench") -> dict:
    """One block size through real PulseAudio null sinks, block adaptation off: bursts of a
    150 Hz tone are played into sink ``<sinks>_in``, the pipeline reads its monitor and writes
    ``<sinks>_out``; both monitors are recorded the same way, so the onset-to-onset time is the
    pipeline's latency from its input device to its output device (recording delays cancel).
    ``mode``/``target_s``: the pipeline's mode and target latency (set before the first burst).
    ``period_s`` (default: 0.7 s, or 2.5 blocks + 0.3 s for large blocks) must exceed the latency,
    or an output onset is paired with the wrong burst. ``complete`` is False when the recording
    stopped before all bursts were in (``timeout_s``, a hang guard)."""
    if period_s is None:
        period_s = max(0.7, 2.5 * block_ms / 1000.0 + 0.3)
    from ..config import Settings
    from ..metrics import Metrics
    from .audio_io import pactl, resolve_device
    from .pipeline import VoicePipeline

    mods = []
    try:
        for name in (f"{sinks}_in", f"{sinks}_out"):
            res = pactl("load-module", "module-null-sink", f"sink_name={name}", f"rate={E2E_SR}", "channels=1")
            if res.returncode != 0:
                raise RuntimeError(f"cannot create null sink {name}: {res.stderr.strip()}")
            mods.append(res.stdout.strip())
        kw = {} if device_block_ms is None else {"voice_device_block_ms": device_block_ms}
        s = Settings(enable_voice=True, voice_converter=converter, voice_pitch=pitch if converter != "passthrough"
                     else 0.0, voice_input=f"{sinks}_in.monitor", voice_output=f"{sinks}_out",
                     voice_block_ms=block_ms, voice_adapt=False, voice_samplerate=E2E_SR, **kw)
        m = Metrics()
        pipe = VoicePipeline(s, m, mode=mode)
        pipe.start(strict=True)
        pipe.set_target_latency_s(target_s)
        rec_in = _Tap(resolve_device(f"{sinks}_in.monitor", "input"))
        rec_out = _Tap(resolve_device(f"{sinks}_out.monitor", "input"))
        player = _Tap(resolve_device(f"{sinks}_in", "output"), burst_signal(period_s, burst_s))
        try:
            rec_in.stream.start()
            rec_out.stream.start()
            player.stream.start()
            need = int((bursts + 2) * period_s * E2E_SR)
            ok = rec_out.wait_audio(need, timeout_s)
            breakdown_ms = breakdown(pipe)
            st = pipe.status()
            latency_s = pipe.latency_s()
        finally:
            for tap in (player, rec_in, rec_out):
                tap.stream.stop()
                tap.stream.close()
            pipe.stop()
        a_in, a_out = rec_in.audio(), rec_out.audio()
        t_in = np.array([t for t in (rec_in.capture_time(i) for i in onsets(a_in)) if t is not None])
        t_out = np.array([t for t in (rec_out.capture_time(i) for i in onsets(a_out)) if t is not None])
        lat = pair_onsets(t_in, t_out, period_s)[2:] * 1000.0  # the first two: start-up
        e2e = m.histogram("voice.latency_e2e").values()
        return {
            "block_ms": block_ms, "converter": st["converter"], "complete": bool(ok),
            "onsets": int(lat.size), "onset_p50": _pct(lat, 50), "onset_p95": _pct(lat, 95),
            "markers": int(e2e.size), "e2e_p50": _pct(e2e, 50), "e2e_p95": _pct(e2e, 95),
            "underruns": m.counter("voice.underruns"), "device_underflows": m.counter("voice.output_status"),
            "dropped_output_ms": m.counter("voice.dropped_output_samples") * 1000.0 / E2E_SR,
            "trimmed_ms": m.counter("voice.trimmed_output_samples") * 1000.0 / E2E_SR,
            "breakdown": breakdown_ms, "passthrough_reason": st["passthrough_reason"], "latency_s": latency_s,
            "inserted_ms": m.counter("voice.inserted_output_samples") * 1000.0 / E2E_SR,
        }
    finally:
        for mod in reversed(mods):
            pactl("unload-module", mod)


def _pct(v: np.ndarray, q: float) -> float | None:
    return float(np.percentile(v, q)) if np.size(v) else None


def e2e_main(args) -> int:
    import os

    from . import pipeline
    from .engine import MIN_BLOCK_MS, controller_blocks_ms

    if args.output_periods:
        pipeline.OUTPUT_PERIODS = args.output_periods
    if args.mode == "lipsync":
        from .pipeline import LIPSYNC_BLOCK_MS

        blocks = [LIPSYNC_BLOCK_MS]
    elif args.blocks == "all":
        blocks = controller_blocks_ms(MIN_BLOCK_MS)
    else:
        blocks = [float(b) for b in args.blocks.split(",")]
    from ..config import Settings

    dev_ms = args.device_block_ms or Settings().voice_device_block_ms
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"end to end through PulseAudio null sinks: {args.mode} mode, converter {args.converter}, "
          f"{args.bursts} bursts per block, output callbacks {dev_ms:g} ms x "
          f"{pipeline.OUTPUT_PERIODS} of buffering, input {dev_ms * pipeline.INPUT_BLOCK_FRACTION:g} ms, "
          f"adaptation off; {os.cpu_count()} cores, load average {load:.2f} at the start")
    print(f"{'block':>6} {'onset P50':>10} {'P95':>6} {'pipeline P50':>13} {'P95':>6} {'underruns':>10} "
          f"{'dev.underflows':>15} {'dropped ms':>11}")
    rows = []
    for b in blocks:
        r = e2e_run(b, args.converter, bursts=args.bursts, device_block_ms=args.device_block_ms, mode=args.mode)
        rows.append(r)

        def f(v):
            return "-" if v is None else f"{v:.0f}"

        print(f"{b:>6.0f} {f(r['onset_p50']):>10} {f(r['onset_p95']):>6} {f(r['e2e_p50']):>13} "
              f"{f(r['e2e_p95']):>6} {r['underruns']:>10} {r['device_underflows']:>15} "
              f"{r['dropped_output_ms']:>11.0f}" + (f"  PASS-THROUGH: {r['passthrough_reason']}"
                                                    if r["passthrough_reason"] else ""), flush=True)
        print("        breakdown (ms): " + ", ".join(f"{k.strip()} {v:.1f}" for k, v in r["breakdown"].items()),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
