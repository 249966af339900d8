"""Build a side-by-side set whose detector *follows the image*, at realistic compute.

`../shared/bench/`'s detector is scripted (it answers the clip's face position whatever it is
shown), so Mirage's detection on the tracked face region cannot run against it. This set swaps
in `mirage_desktop.testing.face_models.build_marker_scrfd` (each pure-colour square on a dark
background is a face, found wherever it is, at any input size) plus a conv trunk of about the
detector's published compute (SCRFD-10G: ~10 GMAC at 640x640, scaling with the input's area like
the real fully convolutional model) whose result is added times zero, and writes a clip of one
moving marker "face" and a source photo with one. The recognizer and swapper are copied from a
`make_models.py` set, so both tools run identical ONNX files.

    python scripts/make_marker_bench.py --from ../b13/models_full OUT
    # OUT/models: buffalo_l/det_10g.onnx, buffalo_l/w600k_r50.onnx, inswapper_128.onnx
    # OUT/data: marker_1280x720.mp4, source_marker.png

A measuring tool, not part of the product."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def add_trunk(model_path: Path, out_path: Path, convs: int, seed: int = 0) -> float:
    """Add the compute trunk to the marker detector; returns its GMAC at 640x640."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(model_path))
    g = m.graph
    rng = np.random.default_rng(seed)

    def init(name, arr):
        g.initializer.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))

    init("tw0", rng.normal(0, 0.1, (32, 3, 3, 3)))
    init("tb0", np.zeros(32))
    nodes = [helper.make_node("Conv", ["input.1", "tw0", "tb0"], ["t0"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["t0"], ["t0r"])]
    prev = "t0r"
    for i in range(1, convs + 1):
        init(f"tw{i}", rng.normal(0, 0.05, (32, 32, 3, 3)))
        init(f"tb{i}", np.zeros(32))
        nodes += [helper.make_node("Conv", [prev, f"tw{i}", f"tb{i}"], [f"t{i}"], kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"t{i}"], [f"t{i}r"])]
        prev = f"t{i}r"
    init("tzero", np.zeros(1))
    nodes += [helper.make_node("ReduceMean", [prev], ["tmean"], axes=[1, 2, 3], keepdims=1),
              helper.make_node("Mul", ["tmean", "tzero"], ["tnil"])]
    at = None
    for i, n in enumerate(g.node):
        if list(n.output) == ["score_cell"]:
            n.output[0] = "score_cell0"
            at = i
    if at is None:
        raise SystemExit("the marker detector has no score_cell node: build_marker_scrfd changed")
    nodes.append(helper.make_node("Add", ["score_cell0", "tnil"], ["score_cell"]))
    allnodes = list(g.node)
    del g.node[:]
    g.node.extend(allnodes[:at + 1] + nodes + allnodes[at + 1:])
    onnx.checker.check_model(m)
    onnx.save(m, str(out_path))
    return (320 * 320 * 32 * 27 + convs * 320 * 320 * 32 * 32 * 9) / 1e9


def write_clip(path: Path, frames: int = 120, w: int = 1280, h: int = 720) -> None:
    """A red square 200x220 px moving slowly on a dark background with camera noise, 30 fps."""
    import cv2

    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
    r = np.random.default_rng(1)
    for i in range(frames):
        f = np.clip(40 + r.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8)
        cx = int(w / 2 + 120 * np.sin(2 * np.pi * i / frames))
        cy = int(h * 0.46 + 40 * np.cos(2 * np.pi * i / frames))
        f[cy - 110:cy + 110, cx - 100:cx + 100] = (30, 30, 230)
        vw.write(f)
    vw.release()


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import cv2

    from mirage_desktop.testing.face_models import build_marker_scrfd

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--from", dest="src", required=True, help="a make_models.py set (its rec and swapper)")
    ap.add_argument("--convs", type=int, default=10, help="3x3 32->32 convs at 320x320 (10: ~9.5 GMAC at 640)")
    a = ap.parse_args(argv)
    out, src = Path(a.out_dir), Path(a.src)
    (out / "models" / "buffalo_l").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    bare = out / "det_marker_bare.onnx"
    build_marker_scrfd(bare)
    gmac = add_trunk(bare, out / "models" / "buffalo_l" / "det_10g.onnx", a.convs)
    bare.unlink()
    for f in ("buffalo_l/w600k_r50.onnx", "inswapper_128.onnx"):
        shutil.copy(src / f, out / "models" / f)
    meta = json.loads((src / "models.json").read_text()) if (src / "models.json").exists() else {}
    meta.update(generator="scripts/make_marker_bench.py (marker detector + the rec and swapper of " + str(src) + ")",
                det_gmac_at_640=round(gmac, 2))
    (out / "models" / "models.json").write_text(json.dumps(meta, indent=1))
    write_clip(out / "data" / "marker_1280x720.mp4")
    photo = np.full((512, 512, 3), 40, np.uint8)
    photo[131:381, 131:381] = (30, 230, 30)
    cv2.imwrite(str(out / "data" / "source_marker.png"), photo)
    print(f"detector trunk {gmac:.2f} GMAC at 640x640; models in {out / 'models'}, clip and source in {out / 'data'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
