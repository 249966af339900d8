"""Pixel boost's cost: the swap of one face per call at 128 / 256 / 384 / 512 px, P50 and P95.

    python scripts/bench_pixel_boost.py [--compute realistic] [--frames 3] [--boosts 128,256,512] [--batch]

The synthetic inswapper (mirage_desktop/testing/face_models.py) with the real signatures; with
``--compute realistic`` its trunk costs what the published inswapper_128 does per call (175 GMAC,
the same figure ``mirage bench --compute realistic`` uses), ``light`` 20 GMAC, ``tiny`` nothing (the
figures are then the cost of aligning, tiling, masking and pasting alone). A 1280x720 frame with one
real face (the astronaut, as ``mirage bench`` places it). Each boost n runs the model n*n times a
face (one call of n*n with ``--batch``, a free-batch export), so expect about n*n times the 128 px
model time. One untimed call per boost first (ONNX Runtime's first run allocates). Figures depend on
the machine and its load: say which when quoting them.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def build_swapper(compute: str, batch: bool, folder: Path):
    """An InSwapper on the synthetic model at ``compute``'s GMAC per call, and that GMAC as built."""
    from mirage_desktop.models.runtime import create_session
    from mirage_desktop.testing import face_models as synthetic
    from mirage_desktop.vision.swapper import InSwapper

    gmac = {"realistic": synthetic.PUBLISHED_GMAC["inswapper_128"], "light": synthetic.LIGHT_SWAP_GMAC,
            "tiny": 0.0}[compute]
    path = synthetic.build_inswapper(folder / f"inswapper_128_{compute}.onnx", gmac=gmac,
                                     batch="N" if batch else 1)
    return InSwapper(create_session(path, "cpu")), synthetic.trunk_gmac(128, gmac)


def measure(swapper, frame: np.ndarray, face, boost: int, frames: int) -> dict:
    """P50/P95 (ms) of one face's whole swap (align, model, mask, paste) and of its model time."""
    from mirage_desktop.metrics import Metrics

    latent = swapper.latent(np.random.default_rng(0).standard_normal(512))
    n = boost // 128
    swapper.swap(frame.copy(), face, latent, boost=n)  # untimed: the first run allocates
    metrics = Metrics()
    total = []
    for _ in range(frames):
        work = frame.copy()
        t = time.perf_counter()
        swapper.swap(work, face, latent, boost=n, metrics=metrics)
        total.append((time.perf_counter() - t) * 1000)
    model = metrics.histogram("swap.model").values()
    return {"boost": boost, "calls": n * n, "frames": frames,
            "p50": float(np.percentile(total, 50)), "p95": float(np.percentile(total, 95)),
            "model_p50": float(np.percentile(model, 50)), "model_p95": float(np.percentile(model, 95))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compute", choices=("realistic", "light", "tiny"), default="realistic")
    ap.add_argument("--frames", type=int, default=3, help="timed swaps per boost")
    ap.add_argument("--boosts", default="128,256,512", help="pixel boost sizes, comma-separated")
    ap.add_argument("--batch", action="store_true", help="a free-batch export: the n*n tiles in one call")
    args = ap.parse_args()
    boosts = [int(b) for b in args.boosts.split(",")]

    from mirage_desktop.commands.bench import make_frame
    from mirage_desktop.vision.face import Face

    frame, faces = make_frame(1, 1280, 720)
    (bbox, kps), = faces
    face = Face(bbox=np.asarray(bbox, float), kps=np.asarray(kps, float), score=0.9)
    with tempfile.TemporaryDirectory() as d:
        swapper, built = build_swapper(args.compute, args.batch, Path(d))
        rows = [measure(swapper, frame, face, b, args.frames) for b in boosts]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"pixel boost, one face in a 1280x720 frame; synthetic inswapper at {built:.1f} GMAC a call "
          f"({args.compute}{', batched tiles' if args.batch else ''}); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs" + (f", load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else ""))
    print(f"{'boost':>6}{'calls':>7}{'frames':>8}{'swap P50 ms':>13}{'swap P95 ms':>13}"
          f"{'model P50':>11}{'model P95':>11}{'x 128':>8}")
    base = rows[0]["p50"] if rows and rows[0]["boost"] == 128 else None
    for r in rows:
        ratio = f"{r['p50'] / base:>8.1f}" if base else f"{'':>8}"
        print(f"{r['boost']:>6}{r['calls']:>7}{r['frames']:>8}{r['p50']:>13.1f}{r['p95']:>13.1f}"
              f"{r['model_p50']:>11.1f}{r['model_p95']:>11.1f}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
