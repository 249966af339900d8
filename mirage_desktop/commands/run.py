"""`mirage run`: the live engine, headless. Ctrl-C stops it cleanly."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

from .common import add_engine_arguments, load_identity, model_overrides, set_match, settings_from_args


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", default=None, help="camera index (default 0)")
    src.add_argument("--input", help="a video file or a still image instead of the camera")
    p.add_argument("--output", action="append", default=[],
                   help="virtualcam (default) | file:out.mp4 | null; repeat for several")
    p.add_argument("--frames", type=int, help="stop after K output frames")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--loop", action="store_true", help="loop the --input video")
    p.add_argument("--width", type=int, help="capture width (default 1280)")
    p.add_argument("--height", type=int, help="capture height (default 720)")
    p.add_argument("--fps", type=int, help="capture fps (default 30)")
    p.add_argument("--vcam-backend", help="pyvirtualcam backend (v4l2loopback, obs, unitycapture)")
    p.add_argument("--metrics-json", metavar="PATH", help="write metric snapshots to PATH every second")
    p.add_argument("--voice", dest="enable_voice", action="store_true", default=None,
                   help="also run the voice changer (see `mirage voice --help`)")
    p.add_argument("--pitch", dest="voice_pitch", type=float, help="voice pitch shift in semitones")
    p.add_argument("--formant", dest="voice_formant", type=float, help="voice formant factor")
    add_engine_arguments(p)


def run(args) -> int:
    from ..engine import Engine
    from ..fsutil import atomic_write_text
    from ..metrics import format_table
    from ..vision.capture import ImageSource, VideoFileSource, open_source

    extra = {"capture_width": args.width, "capture_height": args.height, "capture_fps": args.fps,
             "vcam_backend": args.vcam_backend, "enable_voice": args.enable_voice,
             "voice_pitch": args.voice_pitch, "voice_formant": args.voice_formant}
    settings = settings_from_args(args, extra)
    engine = Engine(settings, model_overrides=model_overrides(args))
    st = engine.load_models()
    load_identity(engine, args)
    set_match(engine, args)
    for reason in engine.status().passthrough:
        print(f"mirage: pass-through: {reason}", file=sys.stderr)
    if args.input:
        src = open_source(args.input, width=settings.capture_width, height=settings.capture_height,
                          fps=settings.capture_fps, loop=args.loop)
        if isinstance(src, ImageSource) and args.frames is None and args.seconds is None:
            src.frames = None
        if isinstance(src, VideoFileSource):
            src.loop = args.loop
    else:
        src = open_source(int(args.camera or settings.camera), width=settings.capture_width,
                          height=settings.capture_height, fps=settings.capture_fps)
    outputs = args.output or ["virtualcam"]
    # file in, files out: render every frame as fast as the machine allows, drop nothing
    lossless = bool(args.input) and all(o.startswith("file:") for o in outputs) and not args.loop
    if lossless:
        src.realtime = False
    stop = threading.Event()
    old = signal.signal(signal.SIGINT, lambda *_: stop.set())
    voice_status = None
    try:
        engine.start(src, outputs, lossless=lossless)
        print(f"mirage: running {engine.status().source} -> {', '.join(engine.status().outputs)} "
              f"on {st.provider}; Ctrl-C to stop", file=sys.stderr)
        t0 = last = time.perf_counter()
        while not stop.is_set():
            if engine.wait(0.25):
                break  # a finite input ran out
            now = time.perf_counter()
            out = engine.metrics.counter("frames.out")
            if args.frames is not None and out >= args.frames:
                break
            if args.seconds is not None and now - t0 >= args.seconds:
                break
            if now - last >= 1.0:
                last = now
                snap = engine.snapshot()
                if args.metrics_json:
                    atomic_write_text(args.metrics_json, json.dumps(snap, indent=1, default=str))
                tot = snap["stages"].get("total", {})
                fps = snap["gauges"].get("fps", 0.0)
                if sys.stderr.isatty():
                    print(f"\r{fps:5.1f} FPS  total P50 {tot.get('p50') or 0:6.1f} ms  P95 {tot.get('p95') or 0:6.1f} ms"
                          f"  {snap['health']['level']}", end="", file=sys.stderr, flush=True)
        if engine.voice is not None:
            voice_status = engine.voice.status()
    finally:
        engine.stop()
        signal.signal(signal.SIGINT, old)
    snap = engine.snapshot()
    if args.metrics_json:
        atomic_write_text(args.metrics_json, json.dumps(snap, indent=1, default=str))
    print("", file=sys.stderr)
    print(format_table(snap), file=sys.stderr)
    c = snap["counters"]
    print(f"frames in {c.get('frames.in', 0)}, out {c.get('frames.out', 0)}, dropped "
          f"{sum(v for k, v in c.items() if k.startswith('dropped.'))}, swapped faces {c.get('faces.swapped', 0)}",
          file=sys.stderr)
    if voice_status is not None:
        v = voice_status
        print(f"voice: {v.get('converter')} {v.get('input')} -> {v.get('output')}, {v.get('chunks', 0)} chunks, "
              f"latency {v.get('algorithmic_latency_ms') or 0:.0f} ms algorithmic / "
              f"{v.get('measured_latency_ms') or 0:.0f} ms measured"
              + (f", pass-through: {v['passthrough_reason']}" if v.get("passthrough_reason") else "")
              + (f", error: {v['error']}" if v.get("error") else ""), file=sys.stderr)
    return 0
