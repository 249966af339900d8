"""`mirage bench`: the whole video pipeline on 1280x720 frames with one face and with six.

Model weights cannot be assumed, so by default the benchmark builds ONNX models with the real
signatures and about the published compute (SCRFD-10G at 640: ~10 GMAC; ArcFace R50: ~6.3 GMAC;
inswapper_128: assumed 12 GMAC, heavier than both), on whatever execution provider is present.
``--models real`` uses the downloaded models instead. The pipeline is the real one: capture
thread, detector thread, worker, output thread, drop-oldest hand-offs.

Printed: per-stage P50/P95/P99, output FPS, frames dropped, and the per-frame worker time spent
outside model inference (alignment, tracking, masks, paste-back, marks, hand-offs).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

STAGES = ["worker", "worker.outside_model", "track", "swap", "swap.model", "enhance", "enhance.model",
          "detect", "output", "total"]


def add_arguments(p) -> None:
    p.add_argument("--frames", type=int, default=150, help="output frames per scenario (default 150)")
    p.add_argument("--faces", default="1,6", help="scenarios: faces per frame (default 1,6)")
    p.add_argument("--compute", choices=["realistic", "tiny"], default="realistic",
                   help="synthetic model cost: published-size (default) or near-zero (shows pure overhead)")
    p.add_argument("--models", choices=["synthetic", "real"], default="synthetic",
                   help="synthetic models with the real signatures (default) or the downloaded ones")
    p.add_argument("--source-fps", type=float, default=60.0, help="rate the stand-in camera delivers (default 60)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--det-size", type=int, default=640)
    p.add_argument("--detect-interval", type=int, default=5)
    p.add_argument("--enhance", action="store_true", help="include the face enhancer")
    p.add_argument("--enhancer-interval", type=int, default=1)
    p.add_argument("--enhancer", choices=["codeformer", "gfpgan"], default="codeformer",
                   help="with --models real (synthetic runs use a GFPGAN-signature model)")
    p.add_argument("--enhancer-sync", action="store_true", help="run the enhancer inline on the worker")
    p.add_argument("--providers", default="auto")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def _reference_face() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real photo (scikit-image's astronaut, else a drawn face) and its face box and keypoints."""
    try:
        from skimage import data

        img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    except ImportError:
        img = np.full((512, 512, 3), 180, np.uint8)
        cv2.ellipse(img, (256, 230), (90, 120), 0, 0, 360, (150, 170, 210), -1)
    box = np.array([177.0, 67.0, 270.0, 160.0])  # where the face is in the astronaut photo
    kps = np.array([[203.0, 103.0], [244.0, 103.0], [224.0, 125.0], [206.0, 143.0], [241.0, 143.0]])
    try:
        from ..vision.detector import HaarFaceDetector

        found = HaarFaceDetector().detect(img)
        if found:
            box, kps = found[0].bbox, found[0].kps
    except Exception:
        pass
    return img, box, kps


def make_frame(n_faces: int, width: int, height: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """A frame with ``n_faces`` copies of a real face and where each face is."""
    ref, box, kps = _reference_face()
    frame = np.full((height, width, 3), 90, np.uint8)
    cols = 1 if n_faces == 1 else 3
    rows = int(np.ceil(n_faces / cols))
    cell = min(width // cols, height // rows)
    faces = []
    for i in range(n_faces):
        r, c = divmod(i, cols)
        s = cell / ref.shape[0]
        ox = (width - cols * cell) // 2 + c * cell
        oy = (height - rows * cell) // 2 + r * cell
        frame[oy:oy + cell, ox:ox + cell] = cv2.resize(ref, (cell, cell), interpolation=cv2.INTER_AREA)
        faces.append((box * s + [ox, oy, ox, oy], kps * s + [ox, oy]))
    return frame, faces


def run_scenario(n_faces: int, args, workdir: Path) -> dict:
    from ..config import Settings
    from ..engine import Engine
    from ..testing import face_models as synthetic
    from ..outputs.sinks import NullSink
    from ..vision.capture import ImageSource

    frame, faces = make_frame(n_faces, args.width, args.height)
    overrides = {}
    if args.models == "synthetic":
        d = workdir / f"faces{n_faces}"
        scripted = synthetic.scripted_faces_for_image(frame.shape, faces, args.det_size)
        paths = synthetic.build_model_set(d, scripted, args.det_size, realistic=args.compute == "realistic")
        overrides = {"det_10g": paths["det_10g"], "w600k_r50": paths["w600k_r50"],
                     "inswapper_128_fp16": paths["inswapper_128"]}
        if args.enhance:  # the stage's own cost, with a GFPGAN-signature model that costs ~nothing
            overrides["gfpgan_1_4"] = synthetic.build_gfpgan(d / "gfpgan_1_4.onnx")
    settings = Settings(max_faces=n_faces, det_size=args.det_size, detect_interval=args.detect_interval,
                        enable_enhancer=args.enhance, enhancer_interval=args.enhancer_interval,
                        enhancer="gfpgan" if args.models == "synthetic" else args.enhancer,
                        enhancer_async=not args.enhancer_sync,
                        providers=args.providers, enable_ai_mark=True,
                        adapt_video=False, lipsync_mic=False)  # measured at the settings asked for
    engine = Engine(settings, model_overrides=overrides)
    st = engine.load_models()
    from ..vision.face import Face
    from ..vision.identity import SourceIdentity

    box, kps = faces[0]
    emb = engine.analyzer.embed(frame, Face(box, kps, 0.9)) if engine.analyzer.recognizer else None
    engine.set_identity(SourceIdentity("bench", emb))
    if engine.status().passthrough:
        raise SystemExit(f"mirage bench: cannot swap: {engine.status().passthrough[0]}")
    warm = ImageSource(frame, fps=args.source_fps, frames=10)
    engine.start(warm, [NullSink()])
    engine.wait(60)
    engine.stop()
    engine.metrics.reset()
    src = ImageSource(frame, fps=args.source_fps, frames=None)
    t0 = time.perf_counter()
    engine.start(src, [NullSink()])
    while engine.metrics.counter("frames.out") < args.frames:
        time.sleep(0.02)
        if time.perf_counter() - t0 > 600:
            break
    elapsed = time.perf_counter() - t0
    engine.stop()
    snap = engine.snapshot()
    c = snap["counters"]
    out = c.get("frames.out", 0)
    res = {
        "faces": n_faces, "size": f"{args.width}x{args.height}", "frames_out": out, "seconds": elapsed,
        "fps": out / elapsed if elapsed else 0.0,
        "dropped": {k: v for k, v in c.items() if k.startswith("dropped.")},
        "faces_swapped_per_frame": c.get("faces.swapped", 0) / max(out, 1),
        "detector_runs": c.get("detect.runs", 0), "provider": st.provider,
        "stages": {k: v for k, v in snap["stages"].items() if k in STAGES},
    }
    return res


def format_result(r: dict) -> str:
    lines = [f"--- {r['faces']} face(s), {r['size']} -> {r['frames_out']} frames in {r['seconds']:.1f} s: "
             f"{r['fps']:.1f} FPS out, {r['faces_swapped_per_frame']:.2f} faces swapped/frame, "
             f"detector ran {r['detector_runs']}x, dropped {sum(r['dropped'].values())} ({r['provider']})",
             f"{'stage':<22}{'count':>7}{'P50 ms':>9}{'P95 ms':>9}{'P99 ms':>9}"]
    for name in STAGES:
        s = r["stages"].get(name)
        if s and s["count"]:
            lines.append(f"{name:<22}{s['count']:>7}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}")
    w = r["stages"].get("worker")
    if w and w["count"]:
        lines.append(f"worker capacity: {1000.0 / w['mean']:.1f} FPS (1000 / mean worker ms)")
    return "\n".join(lines)


def run(args) -> int:
    import os
    import platform

    if args.json:  # before minutes of benchmarking, not after
        from ..fsutil import check_writable_target

        check_writable_target(args.json, "results file")
    cpu = platform.processor() or platform.machine()
    print(f"mirage bench: {args.width}x{args.height}, {args.compute if args.models == 'synthetic' else 'real'} "
          f"models, det {args.det_size} every {args.detect_interval} frames, source {args.source_fps:.0f} fps; "
          f"{os.cpu_count()} CPU cores ({cpu})", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="mirage-bench-") as tmp:
        for n in [int(x) for x in args.faces.split(",") if x.strip()]:
            r = run_scenario(n, args, Path(tmp))
            results.append(r)
            print(format_result(r))
            sys.stdout.flush()
    if args.json:
        from ..fsutil import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1), "results file")
    return 0
