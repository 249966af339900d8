"""Small ONNX models with the real input/output signatures of the production models.

Model hubs are unreachable from CI, and weights are large, so tests and ``mirage bench
--synthetic`` build these instead. They exercise the real loading, pre-processing, decoding
and inference code; only what the network computes is made up:

* SCRFD (det_10g): input ``input.1`` 1x3xHxW; nine outputs, score/bbox/kps for strides 8, 16,
  32 with two anchors. The detections are *scripted*: the builder is told where faces are
  (in the detector's input pixels) and bakes the matching anchor outputs into the graph.
* ArcFace (w600k_r50): ``input.1`` Nx3x112x112 → ``683`` Nx512, a fixed random projection of
  the pooled face, so different faces give different embeddings and the same face the same.
* inswapper_128: ``target`` 1x3x128x128 + ``source`` 1x512 → ``output`` 1x3x128x128, with the
  512x512 ``emap`` as the graph's last initializer, exactly where the real model keeps it.

``gmac`` adds a convolution trunk of about that many giga multiply-accumulates whose result
feeds the output, so benchmarks see realistic inference cost (:data:`PUBLISHED_GMAC`: SCRFD-10G
at 640 about 10 GMAC, ArcFace R50 at 112 about 6.3 GMAC, inswapper_128 about 175 G per call).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCRFD_STRIDES = (8, 16, 32)


def _onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


# published compute per call, in multiply-accumulates (the convention of insightface's tables,
# where "GFLOPs" count MACs): SCRFD-10G at 640 px, ArcFace R50 (w600k_r50) at 112 px, and
# inswapper_128 (deepinsight's table: ~175 G per call). LIGHT_SWAP_GMAC is the lighter swapper the
# side-by-side harness used (``--compute light``).
PUBLISHED_GMAC = {"det_10g": 10.0, "w600k_r50": 6.3, "inswapper_128": 175.0}
# the face parser has no published figure: counted from the BiSeNet architecture at 512 px
# (convolutions of the main head, the only output Mirage asks for; the two auxiliary heads add
# 0.38 GMAC; params x 4 bytes match the files' sizes): ResNet-18 13.4 GMAC, ResNet-34 23.1 GMAC
PUBLISHED_GMAC_PARSER = {"bisenet_resnet_18": 13.4, "bisenet_resnet_34": 23.1}
LIGHT_SWAP_GMAC = 20.0
_WIDTHS = (64, 128, 256, 512, 1024)


def trunk_gmac(size: int, gmac: float) -> float:
    """The GMAC :func:`_trunk` really builds for a target of ``gmac`` on a ``size``-px input."""
    if gmac <= 0:
        return 0.0
    ch, res, n = _trunk_shape(size, gmac)
    return res * res * 3 * ch * 16 / 1e9 + n * res * res * ch * ch * 9 / 1e9


def _trunk_shape(size: int, gmac: float) -> tuple[int, int, int]:
    """(channels, resolution, 3x3 convs): the narrowest width that needs at most 32 convs, so a
    heavy model (inswapper's 175 GMAC) runs wide convs like the real one, not thousands of tiny ones."""
    res = max(size // 4, 8)
    for ch in _WIDTHS:
        per_conv = res * res * ch * ch * 9 / 1e9
        stem = res * res * 3 * ch * 16 / 1e9
        n = max(1, int(round((gmac - stem) / per_conv)))
        if n <= 32 or ch == _WIDTHS[-1]:
            return ch, res, n
    raise AssertionError("unreachable")


def _trunk(nodes, inits, x: str, size: int, gmac: float, prefix: str, rng, fp16: bool = False) -> str | None:
    """Append a conv trunk of ~``gmac`` GMAC on a ``size``-px input; returns a scalar-ish tensor name.

    The 3x3 convs share one weight tensor (the compute is the same; the file stays small)."""
    if gmac <= 0:
        return None
    _, TensorProto, helper, numpy_helper = _onnx()
    npt = np.float16 if fp16 else np.float32
    ch, _, n = _trunk_shape(size, gmac)
    w0 = (rng.standard_normal((ch, 3, 4, 4)) * 0.05).astype(npt)
    inits.append(numpy_helper.from_array(w0, f"{prefix}_w0"))
    nodes.append(helper.make_node("Conv", [x, f"{prefix}_w0"], [f"{prefix}_c0"], strides=[4, 4],
                                  kernel_shape=[4, 4]))
    w = (rng.standard_normal((ch, ch, 3, 3)) * (1.0 / np.sqrt(ch * 9))).astype(npt)
    inits.append(numpy_helper.from_array(w, f"{prefix}_w"))
    cur = f"{prefix}_c0"
    for i in range(1, n + 1):
        nodes.append(helper.make_node("Conv", [cur, f"{prefix}_w"], [f"{prefix}_c{i}"], pads=[1, 1, 1, 1],
                                      kernel_shape=[3, 3]))
        nodes.append(helper.make_node("Relu", [f"{prefix}_c{i}"], [f"{prefix}_r{i}"]))
        cur = f"{prefix}_r{i}"
    nodes.append(helper.make_node("ReduceMean", [cur], [f"{prefix}_mean"], keepdims=0))
    inits.append(numpy_helper.from_array(np.array(1e-6, npt), f"{prefix}_eps"))
    nodes.append(helper.make_node("Mul", [f"{prefix}_mean", f"{prefix}_eps"], [f"{prefix}_out"]))
    return f"{prefix}_out"


def _with_trunk(nodes, inits, x: str, size: int, gmac: float, rng, result: str, out: str) -> None:
    """``out`` = ``result`` plus (with ``gmac``) a trunk of that compute on input ``x``."""
    helper = _onnx()[2]
    trunk = _trunk(nodes, inits, x, size, gmac, "trunk", rng)
    if trunk:
        nodes.append(helper.make_node("Add", [result, trunk], [out]))
    else:
        nodes.append(helper.make_node("Identity", [result], [out]))


def _save(model, path: Path) -> Path:
    onnx = _onnx()[0]
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@dataclass
class ScriptedFace:
    """A face for the scripted detector, in detector-input pixels."""

    bbox: tuple[float, float, float, float]
    kps: np.ndarray  # (5, 2)
    score: float = 0.9


def build_scrfd(path: Path, faces: list[ScriptedFace], input_size: int = 640, gmac: float = 0.0,
                seed: int = 0) -> Path:
    onnx, TensorProto, helper, numpy_helper = _onnx()
    rng = np.random.default_rng(seed)
    nodes, inits, outputs = [], [], []
    consts = {}
    for s in SCRFD_STRIDES:
        n = (input_size // s) ** 2 * 2
        consts[s] = {1: np.zeros((n, 1), np.float32), 4: np.zeros((n, 4), np.float32),
                     10: np.zeros((n, 10), np.float32)}
    for f in faces:
        x1, y1, x2, y2 = f.bbox
        side = max(x2 - x1, y2 - y1)
        s = 8 if side < 64 else 16 if side < 160 else 32
        g = input_size // s
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        gx, gy = int(np.clip(round(cx / s), 0, g - 1)), int(np.clip(round(cy / s), 0, g - 1))
        ax, ay = gx * s, gy * s
        for a in range(2):
            idx = (gy * g + gx) * 2 + a
            consts[s][1][idx, 0] = f.score if a == 0 else f.score * 0.9
            consts[s][4][idx] = np.array([ax - x1, ay - y1, x2 - ax, y2 - ay], np.float32) / s
            consts[s][10][idx] = ((np.asarray(f.kps, np.float32) - [ax, ay]) / s).reshape(-1)
    trunk = _trunk(nodes, inits, "input.1", input_size, gmac, "trunk", rng)
    # A tiny input-dependent term keeps the graph honest (nothing folds to constants).
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["in_mean"], keepdims=0))
    inits.append(numpy_helper.from_array(np.array(1e-7, np.float32), "tiny"))
    nodes.append(helper.make_node("Mul", ["in_mean", "tiny"], ["dep0"]))
    dep = "dep0"
    if trunk:
        nodes.append(helper.make_node("Add", [dep, trunk], ["dep1"]))
        dep = "dep1"
    names = {1: "score", 4: "bbox", 10: "kps"}
    for c in (1, 4, 10):
        for s in SCRFD_STRIDES:
            cname = f"{names[c]}_{s}_const"
            inits.append(numpy_helper.from_array(consts[s][c], cname))
            out = f"{names[c]}_{s}"
            nodes.append(helper.make_node("Add", [cname, dep], [out]))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, list(consts[s][c].shape)))
    graph = helper.make_graph(nodes, "scrfd_synthetic",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                             [1, 3, input_size, input_size])],
                              outputs, inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def build_arcface(path: Path, gmac: float = 0.0, seed: int = 1) -> Path:
    onnx, TensorProto, helper, numpy_helper = _onnx()
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    nodes.append(helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    w = (rng.standard_normal((3 * 14 * 14, 512)) / np.sqrt(588)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "proj"))
    nodes.append(helper.make_node("MatMul", ["flat", "proj"], ["emb0"]))
    _with_trunk(nodes, inits, "input.1", 112, gmac, rng, "emb0", "683")
    graph = helper.make_graph(nodes, "arcface_synthetic",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def build_inswapper(path: Path, gmac: float = 0.0, seed: int = 2, fp16: bool = False, batch: int | str = 1) -> Path:
    """``output = sigmoid(0.8 * logit(target) + source·W)``: the identity visibly changes the face.

    ``batch="N"``: a free batch size (faces per call), as a re-export may have; the published
    file takes one face per call."""
    onnx, TensorProto, helper, numpy_helper = _onnx()
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    ft = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    npt = np.float16 if fp16 else np.float32
    w = (rng.standard_normal((512, 3)) * 2.0).astype(npt)
    inits.append(numpy_helper.from_array(w, "src_proj"))
    inits.append(numpy_helper.from_array(np.array([-1, 3, 1, 1], np.int64), "bshape"))
    inits.append(numpy_helper.from_array(np.array(0.8, npt), "keep"))
    inits.append(numpy_helper.from_array(np.array(4.0, npt), "gain"))
    inits.append(numpy_helper.from_array(np.array(0.5, npt), "half"))
    nodes.append(helper.make_node("MatMul", ["source", "src_proj"], ["sp"]))
    nodes.append(helper.make_node("Reshape", ["sp", "bshape"], ["sp4"]))
    nodes.append(helper.make_node("Sub", ["target", "half"], ["tc"]))
    nodes.append(helper.make_node("Mul", ["tc", "gain"], ["tl"]))
    nodes.append(helper.make_node("Mul", ["tl", "keep"], ["tk"]))
    nodes.append(helper.make_node("Add", ["tk", "sp4"], ["pre"]))
    trunk = _trunk(nodes, inits, "target", 128, gmac, "trunk", rng, fp16=fp16)
    if trunk:
        nodes.append(helper.make_node("Add", ["pre", trunk], ["pre2"]))
        nodes.append(helper.make_node("Sigmoid", ["pre2"], ["output"]))
    else:
        nodes.append(helper.make_node("Sigmoid", ["pre"], ["output"]))
    emap = (rng.standard_normal((512, 512)) / np.sqrt(512)).astype(np.float32)
    inits.append(numpy_helper.from_array(emap, "emap"))  # last initializer, as in the real file
    graph = helper.make_graph(nodes, "inswapper_synthetic",
                              [helper.make_tensor_value_info("target", ft, [batch, 3, 128, 128]),
                               helper.make_tensor_value_info("source", ft, [batch, 512])],
                              [helper.make_tensor_value_info("output", ft, [batch, 3, 128, 128])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def scripted_faces_for_image(image_shape: tuple, faces_xyxy_kps: list[tuple[np.ndarray, np.ndarray]],
                             det_size: int = 640, score: float = 0.9) -> list[ScriptedFace]:
    """Convert faces in image pixels to detector-input pixels (SCRFD letterboxes to det_size)."""
    h, w = image_shape[:2]
    s = det_size / max(h, w)
    return [ScriptedFace(tuple(np.asarray(b, float) * s), np.asarray(k, float) * s, score)
            for b, k in faces_xyxy_kps]


def build_model_set(folder: Path, faces: list[ScriptedFace], det_size: int = 640, *,
                    realistic: bool = False, gmac: dict[str, float] | None = None,
                    swapper_fp16: bool = False, swapper_batch: int | str = 1) -> dict[str, Path]:
    """det_10g.onnx, w600k_r50.onnx, inswapper_128.onnx in ``folder``. ``realistic=True`` builds
    them at the published compute (:data:`PUBLISHED_GMAC`); ``gmac`` names other figures per model."""
    folder = Path(folder)
    g = dict(PUBLISHED_GMAC) if realistic else {k: 0.0 for k in PUBLISHED_GMAC}
    g.update(gmac or {})
    swap_name = "inswapper_128_fp16" if swapper_fp16 else "inswapper_128"
    return {
        "det_10g": build_scrfd(folder / "det_10g.onnx", faces, det_size, gmac=g["det_10g"]),
        "w600k_r50": build_arcface(folder / "w600k_r50.onnx", gmac=g["w600k_r50"]),
        "inswapper_128": build_inswapper(folder / f"{swap_name}.onnx", gmac=g["inswapper_128"], fp16=swapper_fp16,
                                         batch=swapper_batch),
    }


def build_gfpgan(path: Path, size: int = 512) -> Path:
    """GFPGAN v1.4 ONNX signature: ``input`` 1x3x512x512 RGB in [-1, 1] → same shape.

    Computes ``0.5 * input`` (a visibly flatter face) so tests can see where it was pasted.
    """
    onnx, TensorProto, helper, numpy_helper = _onnx()
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    graph = helper.make_graph([helper.make_node("Mul", ["input", "half"], ["output"])], "gfpgan_synthetic",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])],
                              [half])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def build_marker_scrfd(path: Path) -> Path:
    """A detector with the SCRFD signature (a free input size) whose faces *follow the image*:
    each pure-colour square on a dark background is a face, its box the square's extent, found
    wherever it is, at any input size (a crop or the full frame).

    One colour channel per face, so up to three faces: a channel's bright pixels (above ~190)
    give its box (their min/max coordinates); every stride-32 cell at least 60 % covered by it
    scores 0.95 with that box, and keypoints at typical proportions inside it. The stride-8 and
    stride-16 outputs score nothing. For tests of code that must detect where the face *is* (the
    scripted detector above answers the same whatever it is shown)."""
    onnx, TensorProto, helper, numpy_helper = _onnx()
    from ..vision.detector import KPS_LAYOUT

    nodes, inits = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    const("half", 0.5)
    const("zero", 0.0)
    const("one", 1.0)
    const("big", 1e5)
    const("ax2", 2, np.int64)
    const("ax3", 3, np.int64)
    const("ch_axis", [1], np.int64)
    pos = node("Cast", [node("Greater", ["input.1", "half"], "bright")], "pos", to=TensorProto.FLOAT)
    node("Mul", ["input.1", "zero"], "z")
    ones = node("Add", ["z", "one"], "ones")
    node("CumSum", [ones, "ax3"], "xs1")  # pixel coordinates, whatever the input size
    xs = node("Sub", ["xs1", "one"], "xs")
    node("CumSum", [ones, "ax2"], "ys1")
    ys = node("Sub", ["ys1", "one"], "ys")
    notpos = node("Sub", ["one", pos], "notpos")
    far = node("Mul", [notpos, "big"], "far")
    ext = {}
    for c, grid in (("x", xs), ("y", ys)):
        node("Mul", [grid, pos], f"{c}_in")
        node("Add", [node("ReduceMax", [f"{c}_in"], f"{c}_max0", axes=[2, 3], keepdims=1), "one"], f"{c}_max")
        node("Add", [grid, far], f"{c}_far")
        node("ReduceMin", [f"{c}_far"], f"{c}_min", axes=[2, 3], keepdims=1)
        ext[c] = (f"{c}_min", f"{c}_max")  # [1, 3, 1, 1]: per channel
    s = 32
    const("step", [s, s], np.int64)
    const("starts", [0, 0], np.int64)
    const("ends", [1 << 30, 1 << 30], np.int64)
    const("axes23", [2, 3], np.int64)
    const("inv_s", 1.0 / s)
    node("Slice", [xs, "starts", "ends", "axes23", "step"], "cx")  # each cell's anchor (its corner)
    node("Slice", [ys, "starts", "ends", "axes23", "step"], "cy")
    node("AveragePool", [pos], "cov", kernel_shape=[s, s], strides=[s, s])
    const("cov_min", 0.6)
    act = node("Cast", [node("Greater", ["cov", "cov_min"], "act_b")], "act", to=TensorProto.FLOAT)
    dist = {}
    for name, a, b in (("dl", "cx", ext["x"][0]), ("dt", "cy", ext["y"][0]),
                       ("dr", ext["x"][1], "cx"), ("db", ext["y"][1], "cy")):
        node("Sub", [a, b], f"{name}_px")
        node("Mul", [f"{name}_px", "inv_s"], f"{name}_all")
        node("Mul", [f"{name}_all", act], f"{name}_act")
        dist[name] = node("ReduceSum", [f"{name}_act", "ch_axis"], name, keepdims=1)  # [1, 1, h, w]
    const("score_max", 0.95)
    node("ReduceMax", [act], "hit", axes=[1], keepdims=1)
    score = node("Mul", ["hit", "score_max"], "score_cell")
    node("Add", [dist["dl"], dist["dr"]], "bw")
    node("Add", [dist["dt"], dist["db"]], "bh")
    kp = []
    for i, (rx, ry) in enumerate(KPS_LAYOUT):
        const(f"rx{i}", rx)
        const(f"ry{i}", ry)
        node("Mul", ["bw", f"rx{i}"], f"kx{i}w")
        kp.append(node("Sub", [f"kx{i}w", dist["dl"]], f"kx{i}"))
        node("Mul", ["bh", f"ry{i}"], f"ky{i}h")
        kp.append(node("Sub", [f"ky{i}h", dist["dt"]], f"ky{i}"))
    node("Concat", [dist["dl"], dist["dt"], dist["dr"], dist["db"]], "bbox_cell", axis=1)
    node("Concat", kp, "kps_cell", axis=1)

    def anchors(x: str, c: int, out: str) -> str:
        """[1, C, h, w] per cell -> [h*w*2, C] per anchor (two anchors a cell, as SCRFD's)."""
        const(f"{out}_s1", [-1, 1, c], np.int64)
        const(f"{out}_s2", [-1, c], np.int64)
        node("Transpose", [x], f"{out}_t", perm=[0, 2, 3, 1])
        node("Reshape", [f"{out}_t", f"{out}_s1"], f"{out}_r")
        node("Concat", [f"{out}_r", f"{out}_r"], f"{out}_2", axis=1)
        return node("Reshape", [f"{out}_2", f"{out}_s2"], out)

    outs = {}
    for st in SCRFD_STRIDES:
        if st == s:
            outs[st] = {1: anchors(score, 1, "score_32"), 4: anchors("bbox_cell", 4, "bbox_32"),
                        10: anchors("kps_cell", 10, "kps_32")}
            continue
        node("AveragePool", [pos], f"p{st}", kernel_shape=[st, st], strides=[st, st])
        node("ReduceMax", [f"p{st}"], f"p{st}1", axes=[1], keepdims=1)
        node("Mul", [f"p{st}1", "zero"], f"z{st}")
        outs[st] = {}
        for c, nm in ((1, "score"), (4, "bbox"), (10, "kps")):
            const(f"e{st}_{c}", [1, c, 1, 1], np.int64)
            node("Expand", [f"z{st}", f"e{st}_{c}"], f"z{st}_{c}")
            outs[st][c] = anchors(f"z{st}_{c}", c, f"{nm}_{st}")
    outputs = [helper.make_tensor_value_info(outs[st][c], TensorProto.FLOAT, [None, c])
               for c in (1, 4, 10) for st in SCRFD_STRIDES]
    graph = helper.make_graph(nodes, "scrfd_marker",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              outputs, inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


# the parser's layout prior: (class, centre in ArcFace-512 crop px, half-axes) drawn in order, the
# later on top (the face-parsing BiSeNet classes: 1 skin, 2/3 brows, 4/5 eyes, 10 nose, 11 mouth,
# 12/13 lips)
_PARSER_LAYOUT = (
    (1, (256, 290), (175, 230)),
    (2, (185, 170), (42, 12)), (3, (326, 170), (42, 12)),
    (4, (185, 207), (40, 20)), (5, (326, 206), (40, 20)),
    (10, (256, 280), (28, 42)),
    (12, (256, 358), (62, 12)), (13, (256, 384), (62, 14)), (11, (256, 370), (50, 5)),
)


def build_parser(path: Path, gmac: float = 0.0, seed: int = 5) -> Path:
    """Face parser (FaceFusion's ``bisenet_resnet_18/34``): ``input`` 1x3x512x512 RGB normalised
    with the ImageNet mean and std → ``output`` 1x19x512x512 class logits.

    What it computes: a fixed layout prior for an ArcFace-aligned face crop (skin oval, brows,
    eyes, nose, lips, mouth where the template puts them; background around them) plus a colour
    term that makes *saturated green* pixels background, wherever they are. So a green bar held
    in front of a real face is parsed as "not face" (an occluder), the rest of the face as its
    regions, and pixel noise flips class borders (a mask that flickers without smoothing)."""
    import cv2

    onnx, TensorProto, helper, numpy_helper = _onnx()
    rng = np.random.default_rng(seed)
    grid = 64
    prior = np.zeros((19, grid, grid), np.float32)
    prior[0] = 6.0  # background, where no region is drawn
    for cls, (cx, cy), (ax, ay) in _PARSER_LAYOUT:
        m = np.zeros((grid, grid), np.float32)
        cv2.ellipse(m, (int(round(cx * grid / 512)), int(round(cy * grid / 512))),
                    (max(1, int(round(ax * grid / 512))), max(1, int(round(ay * grid / 512)))), 0, 0, 360, 1.0, -1)
        prior[cls] = np.maximum(prior[cls], m * (8.0 + cls * 0.1))  # later (inner) regions win over skin
        if cls != 1:
            prior[1] -= m * 2.0
    prior[0] -= (prior[1] > 0) * 3.0
    # colour term on the normalised input: background += 4 * (G - (R + B) / 2)
    w = np.zeros((19, 3, 1, 1), np.float32)
    w[0, :, 0, 0] = (-2.0, 4.0, -2.0)
    nodes, inits = [], []
    inits += [numpy_helper.from_array(prior[None], "prior"), numpy_helper.from_array(w, "colour_w"),
              numpy_helper.from_array(np.array([], np.float32), "roi"),
              numpy_helper.from_array(np.array([1, 1, 512 / grid, 512 / grid], np.float32), "scales")]
    nodes.append(helper.make_node("Resize", ["prior", "roi", "scales"], ["prior512"], mode="linear"))
    nodes.append(helper.make_node("Conv", ["input", "colour_w"], ["colour"], kernel_shape=[1, 1]))
    nodes.append(helper.make_node("Add", ["prior512", "colour"], ["logits"]))
    _with_trunk(nodes, inits, "input", 512, gmac, rng, "logits", "output")
    graph = helper.make_graph(nodes, "bisenet_synthetic",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 19, 512, 512])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
