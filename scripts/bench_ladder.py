"""The degrade ladder under real load: its steps down with realistic-compute models (the light set),
and its way back when the load goes (the same stream switched to near-zero-cost models, the "after a download"
path of Engine.load_models). Prints one row per step with the frame it happened at and the
worker's P50 over the frames before it, then the time each phase took.

    python scripts/bench_ladder.py [--fps 30] [--load-seconds 150] [--recover-seconds 240]

Synthetic models with the real signatures (mirage_desktop/testing/face_models.py); a camera-paced
1280x720 still with one real face. Figures depend on the machine: say which when quoting them.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--load-seconds", type=float, default=150.0, help="at most this long under load")
    ap.add_argument("--recover-seconds", type=float, default=240.0, help="at most this long to recover")
    args = ap.parse_args()

    from mirage_desktop.commands.bench import make_frame
    from mirage_desktop.config import Settings
    from mirage_desktop.engine import Engine
    from mirage_desktop.outputs.sinks import NullSink
    from mirage_desktop.testing import face_models as synthetic
    from mirage_desktop.vision.capture import ImageSource

    logging.basicConfig(level=logging.ERROR)
    frame, faces = make_frame(1, 1280, 720)
    work = Path(tempfile.mkdtemp(prefix="mirage-ladder-"))
    sets = {}
    # the light set (published detector and recognizer, a 20 GMAC swapper): the published 175 GMAC
    # swapper takes ~4 s a call on 2 cores, which only makes the load phase longer
    light = dict(synthetic.PUBLISHED_GMAC, inswapper_128=synthetic.LIGHT_SWAP_GMAC)
    for name, gmac in (("realistic", light), ("tiny", None)):
        scripted = synthetic.scripted_faces_for_image(frame.shape, faces, 640)
        p = synthetic.build_model_set(work / name, scripted, 640, gmac=gmac)
        sets[name] = {"det_10g": p["det_10g"], "w600k_r50": p["w600k_r50"], "inswapper_128_fp16": p["inswapper_128"]}
    engine = Engine(Settings(lipsync_mic=False), model_overrides=sets["realistic"])
    engine.load_models()
    engine.set_source_photos([frame], "bench")  # the face in the frame is the identity too
    m = engine.metrics
    rows = []

    def watch(phase: str, done, limit_s: float) -> float:
        t0 = time.perf_counter()
        seen = len(engine.pipeline.ladder.log)
        while time.perf_counter() - t0 < limit_s and not done():
            m.wait_for("frames.out", m.counter("frames.out") + 1, 1.0)
            log = engine.pipeline.ladder.log
            while seen < len(log):
                what, level, reason = log[seen]
                w = m.histogram("worker").values()[-30:]
                rows.append((phase, time.perf_counter() - t0, m.counter("frames.out"), what, level, reason,
                             float(np.median(w)) if w.size else 0.0))
                seen += 1
        return time.perf_counter() - t0

    engine.start(ImageSource(frame, fps=args.fps), [NullSink()])
    lad = engine.pipeline.ladder
    try:
        t_load = watch("load", lambda: lad.level == len(lad.steps), args.load_seconds)
        deepest = lad.level
        engine.overrides = dict(sets["tiny"])  # the load goes: the same stream, light models
        engine.load_models()
        t_rec = watch("recover", lambda: lad.level == 0, args.recover_seconds)
    finally:
        engine.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; "
          f"camera-paced still at {args.fps:.0f} FPS, 1280x720, one face")
    print(f"{'phase':<8}{'t s':>7}{'frame':>7}  {'step':<5}{'level':>6}  worker P50 (30 fr)  reason")
    for phase, t, n, what, level, reason, w in rows:
        print(f"{phase:<8}{t:7.1f}{n:7d}  {what:<5}{level:6d}  {w:10.1f} ms        {reason}")
    mean = sum(lad.recent) / len(lad.recent) if lad.recent else 0.0
    print(f"load: {deepest} of {len(lad.steps)} steps down in {t_load:.0f} s; "
          f"recovery to level {lad.level} in {t_rec:.0f} s (load ratio at the end {mean:.2f}, "
          f"{lad.stable} stable frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
