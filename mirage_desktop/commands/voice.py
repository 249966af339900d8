"""``mirage voice``: run the real-time voice changer headless until Ctrl+C (or --seconds)."""

from __future__ import annotations

import argparse
import sys

from ..config import F0_METHODS, VOICE_CONVERTERS


def _signed_float(text: str) -> float:
    return float(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pitch", type=_signed_float, default=None, help="pitch shift in semitones, e.g. +4 or -3")
    parser.add_argument("--formant", type=float, default=None, help="formant ratio, 1.0 = unchanged, 1.1 = 10%% up")
    parser.add_argument("--preset", default=None, help="built-in voice preset (neutral, deeper, higher, feminine, "
                                                       "masculine, chipmunk, giant, robot, whisper)")
    parser.add_argument("--input", default=None, help="microphone: name, name fragment or index (`mirage devices`)")
    parser.add_argument("--output", default=None,
                        help='output device, e.g. "Mirage Microphone", "CABLE Input", "BlackHole"')
    parser.add_argument("--converter", choices=VOICE_CONVERTERS, default=None,
                        help="world: built-in pitch/formant changer (default); rvc: your RVC ONNX model")
    parser.add_argument("--model", default=None, help="RVC synthesizer .onnx (with --converter rvc)")
    parser.add_argument("--encoder", default=None, help="content encoder .onnx, e.g. vec-768-layer-12.onnx")
    parser.add_argument("--rmvpe", default=None, help="RMVPE .onnx for --f0 rmvpe")
    parser.add_argument("--f0", dest="f0_method", choices=F0_METHODS, default=None,
                        help="F0 method (default: dio for world, rmvpe for rvc)")
    parser.add_argument("--speaker", type=int, default=None, help="RVC speaker id")
    parser.add_argument("--block-ms", type=float, default=None,
                        help="start chunk size in ms (default: the smallest the converter keeps up with)")
    parser.add_argument("--silence-db", type=float, default=None,
                        help="pass chunks quieter than this through (default -50)")
    parser.add_argument("--no-adapt", action="store_true", help="keep the chunk size fixed")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl+C)")
    parser.add_argument("--stats-every", type=float, default=5.0, help="print status every N seconds (0 = never)")


FLAGS = {"voice_pitch": "--pitch", "voice_formant": "--formant", "voice_input": "--input", "voice_output": "--output",
         "voice_preset": "--preset", "voice_converter": "--converter", "voice_model": "--model",
         "voice_encoder": "--encoder", "voice_rmvpe": "--rmvpe", "voice_f0_method": "--f0",
         "voice_speaker": "--speaker", "voice_block_ms": "--block-ms", "voice_silence_db": "--silence-db"}
ARGS = {"voice_pitch": "pitch", "voice_formant": "formant", "voice_input": "input", "voice_output": "output",
        "voice_preset": "preset", "voice_converter": "converter", "voice_model": "model", "voice_encoder": "encoder",
        "voice_rmvpe": "rmvpe", "voice_f0_method": "f0_method", "voice_speaker": "speaker",
        "voice_block_ms": "block_ms", "voice_silence_db": "silence_db"}


def settings_from_args(args):
    """The settings with this command's flags on top; every flag is checked like its setting, and a
    bad value names the flag."""
    from ..config import load

    cli = {"enable_voice": True, **{name: getattr(args, attr) for name, attr in ARGS.items()}}
    if args.no_adapt:
        cli["voice_adapt"] = False
    res = load(cli, flag_names=FLAGS)
    for notice in res.notices:
        print(f"mirage: notice: {notice}", file=sys.stderr)
    return res.settings


def _line(st: dict) -> str:
    def f(v, fmt="{:.0f}"):
        return "-" if v is None else fmt.format(v)

    reason = f"  PASS-THROUGH: {st['passthrough_reason']}" if st.get("passthrough_reason") else ""
    return (f"voice: {st.get('converter')}  chunks {st.get('chunks')}  block {f(st.get('block_ms'))} ms  "
            f"rtf {f(st.get('rtf'), '{:.2f}')}  accept {f(st.get('accept_ratio'), '{:.0%}')}  "
            f"latency alg {f(st.get('algorithmic_latency_ms'))} ms / measured {f(st.get('measured_latency_ms'))} ms"
            f"{reason}")


def run(args) -> int:
    import time

    from ..metrics import Metrics, format_table
    from ..voice.pipeline import VoicePipeline

    settings = settings_from_args(args)
    metrics = Metrics()
    pipe = VoicePipeline(settings, metrics)
    pipe.start(strict=True)  # MirageError → "mirage: error: ..." and exit 2
    st = pipe.status()
    print(f"voice: {st['input']} -> {st['output']}  converter {st['configured_converter']}  "
          f"algorithmic latency {st['algorithmic_latency_ms']:.0f} ms  (Ctrl+C to stop)", flush=True)
    t0 = last = time.monotonic()
    shown_reason = None
    try:
        while True:
            time.sleep(0.2)
            st = pipe.status()
            if st.get("passthrough_reason") != shown_reason:
                shown_reason = st.get("passthrough_reason")
                if shown_reason:
                    print(f"voice: passing the voice through — {shown_reason}", flush=True)
            if not st["running"]:
                print(f"voice: stopped — {st['error'] or 'worker ended'}", flush=True)
                return 1
            now = time.monotonic()
            if args.stats_every and now - last >= args.stats_every:
                last = now
                print(_line(st), flush=True)
            if args.seconds and now - t0 >= args.seconds:
                break
    except KeyboardInterrupt:
        pass
    finally:
        pipe.stop()
    print(_line(pipe.status()))
    print(format_table(metrics.snapshot(), [s for s in metrics.snapshot()["stages"] if s.startswith("voice.")]))
    return 0
