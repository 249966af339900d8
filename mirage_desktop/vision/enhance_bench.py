"""Benchmark of the enhancement stage at 1280x720: per-stage P50/P95/P99, enhancer every frame
and every k-th frame.

    python -m mirage_desktop.vision.enhance_bench [--frames 6] [--interval 3] [--weights codeformer.pth]

Without ``--weights`` it uses the CodeFormer architecture with random weights (the cost is the
same; the picture is noise). One face from skimage's astronaut photo, moving a little every
frame so re-used results are re-warped. Also times the per-frame helpers: LAB colour transfer
at 128 px and One-Euro keypoint smoothing. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import numpy as np

from ..metrics import Metrics, format_table
from .blend import face_mask
from .color import match_color
from .enhancer import CodeFormerEnhancer, EnhanceStage
from .face import Face
from .smoothing import KeypointSmoother

# five keypoints of the face in skimage.data.astronaut() (512x512)
_ASTRONAUT_KPS = np.array([[202.0, 105.0], [249.0, 101.0], [230.0, 126.0], [208.0, 146.0], [247.0, 143.0]])


def _scene(w: int = 1280, h: int = 720) -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    frame = np.full((h, w, 3), 90, np.uint8)
    s = h / img.shape[0]
    x_off = (w - h) // 2
    frame[:, x_off:x_off + h] = cv2.resize(img, (h, h), interpolation=cv2.INTER_LINEAR)
    return frame, _ASTRONAUT_KPS * s + (x_off, 0)


def _face(kps: np.ndarray, track_id: int = 1) -> Face:
    span = kps[:, 0].max() - kps[:, 0].min()
    x0, y0 = kps.min(0) - (0.9 * span, 1.4 * span)
    x1, y1 = kps.max(0) + (0.9 * span, 1.1 * span)
    return Face(bbox=np.array([x0, y0, x1, y1]), kps=kps.copy(), score=0.9, track_id=track_id)


def build_enhancer(weights: str | None, device: str) -> CodeFormerEnhancer:
    if weights:
        return CodeFormerEnhancer(weights, device=device)
    import torch

    from .codeformer_arch import CodeFormer

    torch.manual_seed(0)
    return CodeFormerEnhancer.from_network(CodeFormer(), device="cuda" if device == "auto" and
                                           torch.cuda.is_available() else ("cpu" if device == "auto" else device),
                                           fp16=None if device != "cpu" else False)


def run(enhancer, interval: int, frames: int, seed: int = 0) -> Metrics:
    metrics = Metrics()
    stage = EnhanceStage(enhancer, interval=interval, blend=0.8, metrics=metrics)
    smoother = KeypointSmoother()
    base, kps0 = _scene()
    mask128 = face_mask(128)
    rng = np.random.default_rng(seed)
    target = cv2.resize(base[100:400, 500:800], (128, 128))
    swapped = cv2.add(target, np.full_like(target, 12))
    for i in range(frames):
        frame = base.copy()  # the "swapped" frame coming out of the previous stage
        t0 = time.perf_counter()
        kps = kps0 + (2.0 * i, 0.5 * i) + rng.normal(0, 1.0, kps0.shape)
        with metrics.timer("smooth"):
            kps = smoother(1, kps, i / 30.0)
        with metrics.timer("color@128"):
            match_color(swapped, target, mask128)
        stage.process(frame, [_face(kps)])
        metrics.record("total", (time.perf_counter() - t0) * 1000.0)
    return metrics


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=6, help="frames for the every-frame run (k-th run does 2x)")
    ap.add_argument("--interval", type=int, default=3)
    ap.add_argument("--weights", default=None, help="a real codeformer.pth (default: random weights)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    import torch

    enh = build_enhancer(args.weights, args.device)
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}; "
          f"enhancer {enh.name} on {enh.provider}, weights {'file' if args.weights else 'random'}, "
          f"fidelity {enh.fidelity}, frame 1280x720, one face")
    warm = np.zeros((enh.size, enh.size, 3), np.uint8)
    enh.enhance(warm)  # first call allocates; keep it out of the figures
    for interval, frames in ((1, args.frames), (args.interval, 2 * args.frames)):
        m = run(enh, interval, frames)
        snap = m.snapshot()
        every = "frame" if interval == 1 else f"{interval}{_ordinal(interval)} frame"
        print(f"\n== enhancer every {every} "
              f"({frames} frames, {m.counter('enhance.runs')} model runs, {m.counter('enhance.reused')} re-used)")
        print(format_table(snap, ["smooth", "color@128", "enhance", "enhance.model", "total"]))
        mean_total = snap["stages"]["total"]["mean"]
        print(f"mean total {mean_total:.1f} ms/frame → {1000.0 / mean_total:.2f} fps for this stage alone")


if __name__ == "__main__":
    main()
