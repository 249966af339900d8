"""`mirage run`: the live engine, headless. Ctrl-C stops it cleanly."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

from .common import (add_engine_arguments, add_setting_flags, load_identity, model_overrides, parse_map,
                     set_face_map, set_match, settings_from_args)


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    add_setting_flags(src, ["camera"])
    src.add_argument("--input", help="a video file or a still image instead of the camera")
    p.add_argument("--output", action="append", default=[],
                   help="virtualcam (default) | file:out.mp4 | null; repeat for several")
    p.add_argument("--frames", type=int, help="stop after K output frames")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--loop", action="store_true", help="loop the --input video")
    p.add_argument("--metrics-json", metavar="PATH", help="write metric snapshots to PATH every second")
    add_setting_flags(p.add_argument_group("capture"), ["capture_width", "capture_height", "capture_fps",
                                                        "vcam_backend"])
    add_setting_flags(p.add_argument_group("voice and lip sync"), ["enable_voice", "voice_pitch", "voice_formant",
                                                                   "lipsync_mic", "av_trim_ms"])
    add_setting_flags(p.add_argument_group("under load"), ["adapt_video"])
    r = p.add_argument_group("remote engine and monitoring (the serve extra)")
    r.add_argument("--remote", metavar="URL", help="use a `mirage serve` engine, e.g. https://gpu-host:8443")
    r.add_argument("--token-file", metavar="FILE", help="the token for --remote / --metrics-port")
    r.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve /health and /metrics on 127.0.0.1:PORT (token required; MIRAGE_SERVE_SECRET)")
    r.add_argument("--secret-file", metavar="FILE", help="the secret tokens for --metrics-port are checked with")
    add_engine_arguments(p)


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # each stops the run as cleanly as Ctrl-C


def check_outputs(specs: list[str]) -> None:
    """Refuse an output that cannot work before anything starts (models, camera)."""
    from pathlib import Path

    from ..errors import MirageError
    from ..fsutil import check_writable_target
    from ..outputs.sinks import check_video_path

    seen: set[Path] = set()
    for spec in specs:
        if spec.startswith("file:"):
            path = Path(spec[5:]).expanduser()
            if not spec[5:]:
                raise MirageError("--output file: needs a path", "e.g. --output file:out.mp4")
            if path.resolve() in seen:
                raise MirageError(f"--output file:{spec[5:]} is given twice", "record each file once")
            seen.add(path.resolve())
            if not path.is_dir():  # a folder is named as such below; otherwise the format first,
                check_video_path(path)  # before any folder is made for it
            check_writable_target(path, "recording")
        elif spec not in ("", "virtualcam", "vcam", "null"):
            raise MirageError(f"unknown output {spec!r}", "use virtualcam, file:out.mp4 or null")


def _write_metrics(path, snap, warned: list) -> None:
    from ..errors import WriteError
    from ..fsutil import atomic_write_text

    try:
        atomic_write_text(path, json.dumps(snap, indent=1, default=str), "metrics file")
    except WriteError as exc:
        if not warned:
            print(f"\nmirage: warning: {exc}; the run goes on without metrics snapshots", file=sys.stderr)
        warned.append(str(exc))


def av_summary(snap: dict, mode: str | None = None) -> list[str]:
    """The one-clock lines of the summary: video and voice latency, their offset, the ladder."""
    st, c, g = snap["stages"], snap["counters"], snap["gauges"]

    def pct(name: str) -> str:
        h = st.get(name) or {}
        return f"P50 {h['p50']:.0f} / P95 {h['p95']:.0f} ms" if h.get("count") else "n/a"

    lines = []
    mode = mode or g.get("av.mode", "none")
    if (st.get("av.offset_ms") or {}).get("count"):
        what = {"convert": "voice changer", "lipsync": "lip-sync microphone"}.get(str(mode), str(mode))
        lines.append(f"A/V ({what}): video capture->output {pct('av.video_latency')}, "
                     f"voice {pct('av.audio_latency')}, offset (video - voice) {pct('av.offset_ms')}; "
                     f"frames dropped late {c.get('dropped.av_late', 0)}")
    downs, ups = c.get("adapt.down", 0), c.get("adapt.up", 0)
    if downs or ups:
        lines.append(f"adapt: {downs} step(s) down, {ups} up, level {g.get('adapt.level', 0)} at the end")
    return lines


def run(args) -> int:
    from ..engine import Engine
    from ..errors import MirageError
    from ..fsutil import check_writable_target
    from ..metrics import format_table
    from ..vision.capture import CameraSource, VideoFileSource, open_source, parse_camera

    if args.frames is not None and args.frames < 1:
        raise MirageError(f"--frames {args.frames} is not a number of frames", "use 1 or more")
    if args.seconds is not None and not args.seconds > 0:
        raise MirageError(f"--seconds {args.seconds} is not a duration", "use a number above 0")
    outputs = args.output or ["virtualcam"]
    check_outputs(outputs)
    parse_map(args.map)  # a malformed pair before any model loads
    if args.metrics_json:
        check_writable_target(args.metrics_json, "metrics file")
    from ..vision.startup import FirstSwap

    first = FirstSwap()  # time to the first swapped frame, shown in the summary
    settings = settings_from_args(args)
    if args.remote and args.map:  # the server swaps with the one face it was sent
        raise MirageError("--map works with this computer's engine, not with --remote",
                          "leave out --remote to map faces, or --map to use the remote engine")
    if args.remote:
        from ..serve.remote import run_remote

        return run_remote(args, settings, outputs)
    camera = None if args.input else parse_camera(settings.camera)
    engine = Engine(settings, model_overrides=model_overrides(args))
    st = engine.load_models()
    first.mark("models loaded")
    engine.subscribe_frames(first)
    load_identity(engine, args)
    set_match(engine, args)
    set_face_map(engine, args)
    for reason in engine.status().passthrough:
        print(f"mirage: pass-through: {reason}", file=sys.stderr)
    if args.input:
        src = open_source(args.input, width=settings.capture_width, height=settings.capture_height,
                          fps=settings.capture_fps, loop=args.loop)
        if isinstance(src, VideoFileSource):
            src.loop = args.loop
    else:
        src = CameraSource(camera, width=settings.capture_width, height=settings.capture_height,
                           fps=settings.capture_fps)
    # file in, files out: render every frame as fast as the machine allows, drop nothing
    lossless = bool(args.input) and all(o.startswith("file:") for o in outputs) and not args.loop
    if lossless:
        src.realtime = False
    stop = threading.Event()
    handlers = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # nohup / `&` ignore them
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    voice_status = None
    av_mode = None
    metrics_warned: list[str] = []
    endpoints = None
    if args.metrics_port is not None:
        from ..serve.app import start_endpoints

        endpoints = start_endpoints(engine, args.metrics_port, args.secret_file)
    try:
        engine.start(src, outputs, lossless=lossless, max_frames=args.frames)
        print(f"mirage: running {engine.status().source} -> {', '.join(engine.status().outputs)} "
              f"on {st.provider}; Ctrl-C to stop", file=sys.stderr)
        t0 = last = time.perf_counter()
        while not stop.is_set():
            if engine.wait(0.25):
                break  # a finite input ran out, --frames were sent, or a recording failed
            now = time.perf_counter()
            if args.seconds is not None and now - t0 >= args.seconds:
                break
            if now - last >= 1.0:
                last = now
                snap = engine.snapshot()
                if args.metrics_json:
                    _write_metrics(args.metrics_json, snap, metrics_warned)
                tot = snap["stages"].get("total", {})
                fps = snap["gauges"].get("fps", 0.0)
                if sys.stderr.isatty():
                    print(f"\r{fps:5.1f} FPS  total P50 {tot.get('p50') or 0:6.1f} ms  "
                          f"P95 {tot.get('p95') or 0:6.1f} ms  {snap['health']['level']}", end="", file=sys.stderr,
                          flush=True)
        av_mode = engine.voice_mode  # before stop() ends the voice path
        if engine.voice is not None:
            voice_status = engine.voice.status()
    finally:
        engine.stop()
        if endpoints is not None:
            endpoints.stop()
        for sig, old in handlers.items():
            signal.signal(sig, old)
    snap = engine.snapshot()
    if args.metrics_json:
        _write_metrics(args.metrics_json, snap, metrics_warned)
    print("", file=sys.stderr)
    print(format_table(snap), file=sys.stderr)
    c = snap["counters"]
    print(f"frames in {c.get('frames.in', 0)}, out {c.get('frames.out', 0)}, dropped "
          f"{sum(v for k, v in c.items() if k.startswith('dropped.'))}, swapped faces {c.get('faces.swapped', 0)}",
          file=sys.stderr)
    print(first.summary(), file=sys.stderr)
    if voice_status is not None:
        v = voice_status
        print(f"voice: {v.get('converter')} {v.get('input')} -> {v.get('output')}, {v.get('chunks', 0)} chunks, "
              f"latency {v.get('algorithmic_latency_ms') or 0:.0f} ms algorithmic / "
              f"{v.get('measured_latency_ms') or 0:.0f} ms measured"
              + (f", pass-through: {v['passthrough_reason']}" if v.get("passthrough_reason") else "")
              + (f", error: {v['error']}" if v.get("error") else ""), file=sys.stderr)
    for line in av_summary(snap, av_mode):
        print(line, file=sys.stderr)
    rc = 1 if metrics_warned else 0
    if args.frames is not None and c.get("frames.out", 0) < args.frames and not stop.is_set() and \
            not any(o.error for o in engine.last_outputs):
        print(f"mirage: note: the input ended after {c.get('frames.out', 0)} of the {args.frames} frames asked for",
              file=sys.stderr)
    for out in engine.last_outputs:
        if out.kept is not None and out.error is None:
            print(f"{out.output}: {out.kept} frames written", file=sys.stderr)
        if out.error is not None:
            print(f"mirage: error: {out.error}", file=sys.stderr)
            if out.critical:
                rc = 1
    return rc
