"""`mirage bench`: the whole video pipeline on 1280x720 frames with one face and with six.

Model weights cannot be assumed, so by default the benchmark builds ONNX models with the real
signatures and the published compute of each real model (``--compute realistic``: SCRFD-10G at
640 ~10 GMAC, ArcFace R50 ~6.3 GMAC, inswapper_128 ~175 G per call; ``--compute light``: the same
with a 20 GMAC swapper; ``--compute tiny``: near zero, so what is left is the pipeline itself).
The figures it built are printed. ``--models real`` uses the downloaded models; ``--clip`` and
``--model NAME=PATH`` run any clip and ONNX files (the side-by-side harness's, say).

The pipeline is the real one: capture thread, detector thread, worker, output thread,
drop-oldest hand-offs. Timing starts at the first frame that leaves with a face swapped: frames
that went out unswapped before the first detection returned are not counted (the time they took
is reported as the time to the first swapped frame). Every measured frame must have all the
faces the clip contains swapped, else the run fails, saying how many frames fell short.

Printed: per-stage P50/P95/P99, output FPS, swapped faces per frame, frames dropped, the
detector's real interval (frames) and lag (ms from the frame's capture to its result being
used), and the per-frame worker time outside model inference (alignment, tracking, masks,
paste-back, marks, hand-offs).

``--providers cuda`` or ``tensorrt`` runs the GPU suite instead (:mod:`.bench_gpu`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

STAGES = ["worker", "worker.outside_model", "track", "parse", "parse.model", "swap", "swap.model", "enhance",
          "enhance.model",
          "detect", "detect.interval", "detect.interval_captured", "detect.full_interval", "detect.lag", "output",
          "total"]
COMPUTE = ("realistic", "light", "tiny")

# insightface's group photo (t1.jpg, 1280x886): the six faces, x1 y1 x2 y2 in its pixels, and the
# five keypoints where they were marked by hand (two faces are turned away from the camera)
T1_FACES = [
    ((876, 71, 994, 189), None), ((1114, 280, 1228, 394), None), ((449, 276, 584, 411), None),
    ((727, 358, 835, 466), None),
    ((62, 265, 165, 385), [[88, 310], [132, 308], [112, 340], [102, 363], [140, 360]]),
    ((268, 140, 370, 265), [[292, 210], [327, 197], [322, 222], [312, 245], [338, 238]]),
]


def add_arguments(p) -> None:
    p.add_argument("--frames", type=int, default=150,
                   help="measured output frames per scenario, counted from the first swapped frame (default 150)")
    p.add_argument("--faces", default="1,6", help="scenarios: faces per frame, 1 and/or 6 (default 1,6)")
    p.add_argument("--compute", choices=COMPUTE, default="realistic",
                   help="synthetic model cost: the published compute of each real model (default), light (a "
                        "20 GMAC swapper) or tiny (near zero: shows pure overhead)")
    p.add_argument("--swap-gmac", type=float, help="the synthetic swapper's compute per call, in GMAC")
    p.add_argument("--batch-faces", action="store_true",
                   help="a synthetic swapper with a free batch size: all faces of a frame in one call (the "
                        "published inswapper_128 takes one face per call)")
    p.add_argument("--models", choices=["synthetic", "real"], default="synthetic",
                   help="synthetic models with the real signatures (default) or the downloaded ones")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="use this ONNX file (det_10g, w600k_r50, inswapper_128) instead of building one")
    p.add_argument("--clip", help="a video file to run instead of the built-in frames (decoded into memory)")
    p.add_argument("--source-photo", help="with --clip: the photo whose face is swapped in (default: the clip's)")
    p.add_argument("--expect-faces", type=int, help="with --clip: faces the clip holds (default 1)")
    p.add_argument("--source-fps", type=float, default=60.0,
                   help="rate the stand-in camera delivers (default 60); 0: as fast as the pipeline takes frames")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--det-size", type=int, default=640)
    p.add_argument("--detect-interval", type=int, default=5)
    p.add_argument("--full-frame-detect", action="store_true",
                   help="search the whole frame at every detection (detect_on_tracks off): for a detector that "
                        "answers the same whatever it is shown, such as the side-by-side harness's scripted one")
    p.add_argument("--enhance", action="store_true", help="include the face enhancer")
    p.add_argument("--enhancer-interval", type=int, default=1)
    p.add_argument("--enhancer", choices=["codeformer", "gfpgan"], default="codeformer",
                   help="with --models real (synthetic runs use a GFPGAN-signature model)")
    p.add_argument("--enhancer-sync", action="store_true", help="run the enhancer inline on the worker")
    p.add_argument("--parser", action="store_true",
                   help="include the occlusion-aware mask (a synthetic BiSeNet-signature parser at the compute "
                        "--compute asks for)")
    p.add_argument("--parser-interval", type=int, default=3, help="parse every N frames (default 3)")
    p.add_argument("--parser-sync", action="store_true", help="run the parser inline on the worker")
    p.add_argument("--pixel-boost", type=int, choices=(128, 256, 384, 512), default=128,
                   help="swapped face size: 256/384/512 run the swapper on 2x2/3x3/4x4 tiles")
    p.add_argument("--providers", default="auto", help="auto, cpu, ...; cuda or tensorrt runs the GPU suite")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up on a scenario after this many seconds")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def model_gmac(args) -> dict[str, float]:
    """The compute asked of each synthetic model (GMAC per call)."""
    from ..testing import face_models as synthetic

    if args.compute == "tiny":
        g = {k: 0.0 for k in synthetic.PUBLISHED_GMAC}
    else:
        g = dict(synthetic.PUBLISHED_GMAC)
        if args.compute == "light":
            g["inswapper_128"] = synthetic.LIGHT_SWAP_GMAC
    if args.swap_gmac is not None:
        g["inswapper_128"] = float(args.swap_gmac)
    return g


def describe_compute(g: dict[str, float], det_size: int) -> str:
    from ..testing import face_models as synthetic

    if not any(g.values()):
        return "tiny models (near-zero compute: the figures are the pipeline's own cost)"
    sizes = {"det_10g": det_size, "w600k_r50": 112, "inswapper_128": 128}
    parts = []
    for k, want in g.items():
        built = synthetic.trunk_gmac(sizes[k], want)
        pub = synthetic.PUBLISHED_GMAC[k]
        parts.append(f"{k} {built:.1f} GMAC/call (asked {want:g}; published {pub:g})")
    return "synthetic models: " + ", ".join(parts)


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


def _t1_path() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"
    return p if p.is_file() else None


def six_face_frame(width: int, height: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], str]:
    """insightface's group photo (six people) fitted into the frame, and where each face is."""
    from ..vision.detector import _kps_from_box
    from ..vision.image_io import load_image

    p = _t1_path()
    if p is None:
        frame, faces = make_frame(6, width, height)
        return frame, faces, "six copies of one face (insightface's t1.jpg is not installed)"
    img = load_image(p)
    s = min(width / img.shape[1], height / img.shape[0])
    nw, nh = int(round(img.shape[1] * s)), int(round(img.shape[0] * s))
    ox, oy = (width - nw) // 2, (height - nh) // 2
    frame = np.full((height, width, 3), 90, np.uint8)
    frame[oy:oy + nh, ox:ox + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    faces = []
    for box, kps in T1_FACES:
        b = np.asarray(box, np.float64)
        k = np.asarray(kps, np.float64) if kps is not None else _kps_from_box(b)
        faces.append((b * s + [ox, oy, ox, oy], k * s + [ox, oy]))
    return frame, faces, "insightface's t1.jpg (six people)"


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


class FramesSource:
    """Frames from memory, in a loop: paced at ``fps``, or with ``fps=0`` handed over as soon as
    the pipeline has taken the previous one (``gate``: its input slot), so nothing is dropped and
    the worker never waits for a camera. Each read is a fresh copy, as a camera's would be."""

    kind = "image"
    name = "bench frames"

    def __init__(self, frames: list[np.ndarray], fps: float):
        self.frames, self.fps = frames, float(fps)
        self.size = (frames[0].shape[1], frames[0].shape[0])
        self.gate = None  # set (with ``ready``) once the pipeline's input slot exists
        self.ready = threading.Event()
        self._i = 0
        self._next = time.perf_counter()
        self.measured_fps = 0.0

    def read(self) -> np.ndarray:
        if self.fps > 0:
            from ..vision.capture import _pace

            self._next = _pace(self._next, self.fps)
        else:
            self.ready.wait(10.0)
            if self.gate is not None:
                self.gate.wait_taken(1.0)
        f = self.frames[self._i % len(self.frames)].copy()
        self._i += 1
        return f

    def close(self) -> None:
        pass


def read_clip(path: str, limit: int = 240) -> list[np.ndarray]:
    from ..errors import InputImageError

    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < limit:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    if not frames:
        raise InputImageError(f"--clip {path} has no frames that can be decoded", "give an H.264 or MP4V video")
    return frames


def _since(h, start: int) -> np.ndarray:
    """The samples histogram ``h`` took after its ``start``-th (those still in its window)."""
    with h._lock:  # the ring buffer, read in order: metrics.LatencyHistogram keeps no other view
        n, w = h._n, h._buf.size
        idx = np.arange(max(start, n - w), n) % w
        return h._buf[idx].copy()


def stage_summary(metrics, marks: dict[str, int]) -> dict[str, dict]:
    """P50/P95/P99 of each stage over the samples taken since ``marks`` (stage -> count then)."""
    out = {}
    for name in STAGES:
        h = metrics._hist.get(name)
        if h is None:
            continue
        v = _since(h, marks.get(name, 0))
        if v.size:
            p50, p95, p99 = np.percentile(v, [50, 95, 99])
            out[name] = {"count": int(v.size), "p50": float(p50), "p95": float(p95), "p99": float(p99),
                         "mean": float(v.mean()), "max": float(v.max())}
    return out


class FrameLog:
    """Frames leaving the pipeline, as seen by a frame subscriber on the output thread: the first
    swapped one starts the clock (the stage and counter figures count from then on: ``marks``);
    ``done`` is set once ``want`` frames have been measured after it."""

    def __init__(self, metrics, want: int):
        self.metrics, self.want = metrics, want
        self.t_start = time.perf_counter()
        self.t_first: float | None = None
        self.unswapped_before = 0
        self.times: list[float] = []
        self.swapped: list[int] = []
        self.marks: dict[str, int] = {}
        self.counters: dict[str, int] = {}
        self.first = threading.Event()
        self.done = threading.Event()

    def __call__(self, pkt) -> None:
        now = time.perf_counter()
        if self.t_first is None:
            if not pkt.swapped:
                self.unswapped_before += 1
                return
            self.t_first = now
            snap = self.metrics.snapshot()
            self.marks = {k: v["count"] for k, v in snap["stages"].items()}
            self.counters = dict(snap["counters"])
            self.first.set()
        if len(self.times) < self.want:
            self.times.append(now)
            self.swapped.append(int(pkt.swapped))
            if len(self.times) >= self.want:
                self.done.set()


def _identity(engine, frame: np.ndarray, face, photo: str | None):
    from ..vision.face import Face
    from ..vision.identity import SourceIdentity
    from ..vision.image_io import load_image

    if photo:
        img = load_image(photo)
        found = engine.analyzer.detect(img)
        if not found:
            raise SystemExit(f"mirage bench: no face found in --source-photo {photo}; give a photo with one face")
        return SourceIdentity("bench", engine.analyzer.embed(img, found[0]))
    if face is None:  # a clip: the face the detector finds on its first frame
        found = engine.analyzer.detect(frame)
        if not found:
            raise SystemExit("mirage bench: the detector finds no face in the clip's first frame; "
                             "check --model det_10g")
        return SourceIdentity("bench", engine.analyzer.embed(frame, found[0]))
    box, kps = face
    emb = engine.analyzer.embed(frame, Face(np.asarray(box), np.asarray(kps), 0.9)) if engine.analyzer.recognizer \
        else None
    return SourceIdentity("bench", emb)


def run_scenario(n_faces: int, args, workdir: Path) -> dict:
    from ..config import Settings
    from ..engine import Engine
    from ..outputs.sinks import NullSink
    from ..testing import face_models as synthetic
    from .common import model_overrides

    overrides = dict(model_overrides(args))
    if args.clip:
        if args.models == "synthetic" and "det_10g" not in overrides:
            raise SystemExit("mirage bench: --clip needs --model det_10g=PATH (a detector that finds the clip's "
                             "faces: a synthetic one is scripted for the built-in frames only)")
        frames = read_clip(args.clip)
        faces = [(np.array([0.0, 0, 1, 1]), np.zeros((5, 2)))] * n_faces  # the detector finds them
        label = args.clip
    elif n_faces == 6:
        frame, faces, label = six_face_frame(args.width, args.height)
        frames = [frame]
    else:
        frame, faces = make_frame(n_faces, args.width, args.height)
        frames = [frame]
        label = "scikit-image's astronaut"
    if args.models == "synthetic":
        d = workdir / f"faces{n_faces}"
        scripted = synthetic.scripted_faces_for_image(frames[0].shape, faces, args.det_size)
        need = [k for k in ("det_10g", "w600k_r50", "inswapper_128") if k not in overrides]
        if need:
            paths = synthetic.build_model_set(d, scripted, args.det_size, gmac=model_gmac(args),
                                              swapper_fp16=getattr(args, "swapper_precision", "") == "fp16",
                                              swapper_batch="N" if getattr(args, "batch_faces", False) else 1)
            for k in need:
                overrides[k] = paths[k]
        if "inswapper_128" in overrides:  # the loader tries the fp16 name first
            overrides.setdefault("inswapper_128_fp16", overrides["inswapper_128"])
        if args.enhance:  # the stage's own cost, with a GFPGAN-signature model that costs ~nothing
            overrides["gfpgan_1_4"] = synthetic.build_gfpgan(d / "gfpgan_1_4.onnx")
        if getattr(args, "parser", False) and "bisenet_resnet_18" not in overrides:
            overrides["bisenet_resnet_18"] = synthetic.build_parser(
                d / "bisenet_resnet_18.onnx", gmac=0.0 if args.compute == "tiny" else
                synthetic.PUBLISHED_GMAC_PARSER["bisenet_resnet_18"])
    settings = Settings(max_faces=n_faces, det_size=args.det_size, detect_interval=args.detect_interval,
                        detect_on_tracks=not getattr(args, "full_frame_detect", False),
                        enable_enhancer=args.enhance, enhancer_interval=args.enhancer_interval,
                        enhancer="gfpgan" if args.models == "synthetic" else args.enhancer,
                        enhancer_async=not args.enhancer_sync,
                        enable_parser=bool(getattr(args, "parser", False)),
                        parser_interval=max(1, int(getattr(args, "parser_interval", 3))),
                        parser_async=not getattr(args, "parser_sync", False),
                        pixel_boost=int(getattr(args, "pixel_boost", 128)),
                        providers=args.providers, enable_ai_mark=True,
                        swapper_precision=getattr(args, "swapper_precision", None) or "fp16",
                        adapt_video=False, lipsync_mic=False)  # measured at the settings asked for
    engine = Engine(settings, model_overrides=overrides)
    st = engine.load_models()
    engine.set_identity(_identity(engine, frames[0], None if args.clip else faces[0], args.source_photo))
    if engine.status().passthrough:
        raise SystemExit(f"mirage bench: cannot swap: {engine.status().passthrough[0]}")
    # warm-up: the sessions' first runs (allocations, kernel choice) are not the steady state
    warm = FrameLog(engine.metrics, 3)
    token = engine.subscribe_frames(warm)
    wsrc = FramesSource(frames, args.source_fps or 60.0)
    engine.start(wsrc, [NullSink()])
    warm.done.wait(args.timeout)
    engine.stop()
    engine.unsubscribe_frames(token)
    log = FrameLog(engine.metrics, args.frames)
    token = engine.subscribe_frames(log)
    src = FramesSource(frames, args.source_fps)
    engine.start(src, [NullSink()])
    src.gate = engine.pipeline.in_slot
    src.ready.set()
    finished = log.done.wait(args.timeout)
    engine.stop()
    engine.unsubscribe_frames(token)
    snap = engine.snapshot()
    c = {k: v - log.counters.get(k, 0) for k, v in snap["counters"].items()}
    n = len(log.times)
    elapsed = log.times[-1] - log.times[0] if n >= 2 else 0.0
    want = args.expect_faces if args.clip and args.expect_faces else n_faces
    short = [k for k in log.swapped if k < want]
    return {
        "faces": n_faces, "clip": label, "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "frames_measured": n, "seconds": elapsed, "finished": finished,
        "fps": (n - 1) / elapsed if elapsed > 0 else 0.0,
        "faces_swapped_per_frame": float(np.mean(log.swapped)) if n else 0.0,
        "frames_short": len(short), "fewest_swapped": min(log.swapped) if n else 0, "faces_expected": want,
        "first_swapped_s": (log.t_first - log.t_start) if log.t_first else None,
        "unswapped_before_first": log.unswapped_before,
        "dropped": {k: v for k, v in c.items() if k.startswith("dropped.")},
        "detector_runs": c.get("detect.runs", 0), "detect_crop": c.get("detect.crop", 0),
        "detect_full": c.get("detect.full", 0), "detect_crop_unmatched": c.get("detect.crop_unmatched", 0),
        "provider": st.provider,
        "stages": stage_summary(engine.metrics, log.marks),
    }


def format_result(r: dict) -> str:
    first = (f"first swapped frame {r['first_swapped_s']:.2f} s after start ({r['unswapped_before_first']} "
             f"unswapped before it, not counted)" if r["first_swapped_s"] is not None else "no frame was swapped")
    lines = [f"--- {r['faces']} face(s), {r['size']} ({r['clip']}) -> {r['frames_measured']} frames in "
             f"{r['seconds']:.1f} s: {r['fps']:.2f} FPS out, {r['faces_swapped_per_frame']:.2f} faces swapped/frame "
             f"(of {r['faces_expected']}), detector ran {r['detector_runs']}x ({r.get('detect_crop', 0)} on the faces' "
             f"region, {r.get('detect_full', 0)} full-frame asked), dropped "
             f"{sum(r['dropped'].values())} ({r['provider']})", f"    {first}",
             f"{'stage':<26}{'count':>7}{'P50 ms':>9}{'P95 ms':>9}{'P99 ms':>9}"]
    for name in STAGES:
        s = r["stages"].get(name)
        if s and s["count"]:
            unit = " (frames)" if name.startswith(("detect.interval", "detect.full_interval")) else ""
            lines.append(f"{name:<26}{s['count']:>7}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}{unit}")
    w = r["stages"].get("worker")
    if w and w["count"]:
        lines.append(f"worker capacity: {1000.0 / w['mean']:.1f} FPS (1000 / mean worker ms)")
    return "\n".join(lines)


def failure(r: dict) -> str | None:
    """One line when the run does not show what it claims to (faces left unswapped), else None."""
    if not r["frames_measured"]:
        return (f"mirage bench: {r['faces']}-face scenario: no frame was swapped within the time allowed; "
                "check the models (mirage doctor) or give more --timeout")
    crop, unmatched = r.get("detect_crop", 0), r.get("detect_crop_unmatched", 0)
    if crop and unmatched * 5 > crop:
        return (f"mirage bench: {r['faces']}-face scenario: {unmatched} faces found by the {crop} detections on the "
                "tracked faces' region matched no tracked face: the detector does not follow the image (a scripted "
                "one?), so the swapped faces may be in the wrong place — give --full-frame-detect")
    if r["frames_short"]:
        return (f"mirage bench: {r['faces']}-face scenario: {r['frames_short']} of {r['frames_measured']} measured "
                f"frames had fewer than {r['faces_expected']} faces swapped (fewest {r['fewest_swapped']}); the "
                "figures above overstate the speed — check the detector and --expect-faces")
    if not r["finished"]:
        return (f"mirage bench: {r['faces']}-face scenario: only {r['frames_measured']} frames within --timeout; "
                "give more --timeout or fewer --frames")
    return None


def run(args) -> int:
    import os
    import platform

    from ..models.runtime import SHORT_NAMES

    if args.frames < 2:
        raise SystemExit(f"mirage bench: --frames {args.frames} is too few to time; use 2 or more")
    if args.json:  # before minutes of benchmarking, not after
        from ..fsutil import check_writable_target

        check_writable_target(args.json, "results file")
    wanted = [SHORT_NAMES.get(p.strip().lower(), p.strip()) for p in args.providers.split(",")]
    if any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in wanted):
        from .bench_gpu import run_suite

        return run_suite(args)
    scenarios = [int(x) for x in args.faces.split(",") if x.strip()]
    if args.clip:
        scenarios = [args.expect_faces or 1]
    if any(n < 1 for n in scenarios):
        raise SystemExit(f"mirage bench: --faces {args.faces}: give face counts of 1 or more, e.g. 1,6")
    cpu = platform.processor() or platform.machine()
    g = model_gmac(args)
    given = {n.split("=", 1)[0].strip() for n in args.model}
    if args.models != "synthetic":
        what = "downloaded models"
    elif {"det_10g", "w600k_r50", "inswapper_128"} <= given:
        what = "models given with --model (their compute is their own)"
    else:
        what = describe_compute(g, args.det_size)
        if given:
            what += f"; {', '.join(sorted(given))} given with --model"
    print(f"mirage bench: {args.width}x{args.height}, det {args.det_size} every {args.detect_interval} frames, "
          f"source {'as fast as taken' if not args.source_fps else f'{args.source_fps:.0f} fps'}; "
          f"{os.cpu_count()} CPU cores ({cpu})\n{what}", file=sys.stderr)
    results, failures = [], []
    with tempfile.TemporaryDirectory(prefix="mirage-bench-") as tmp:
        for n in scenarios:
            r = run_scenario(n, args, Path(tmp))
            results.append(r)
            print(format_result(r))
            sys.stdout.flush()
            f = failure(r)
            if f:
                failures.append(f)
    if args.json:
        from ..fsutil import atomic_write_text

        atomic_write_text(args.json, json.dumps({"compute": g if args.models == "synthetic" else "real",
                                                 "scenarios": results}, indent=1), "results file")
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0
