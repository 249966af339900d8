"""Every model is checked against its contract at load: a wrong-signature file is refused with the
expected and actual shapes, and the app falls back to pass-through instead of failing per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mirage_desktop.cli import main
from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.errors import ModelError
from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.models.runtime import create_session
from mirage_desktop.vision.detector import SCRFD
from mirage_desktop.vision.enhancer import GFPGANEnhancer
from mirage_desktop.vision.recognizer import ArcFace
from mirage_desktop.vision.swapper import InSwapper


def build_signature(path: Path, inputs: list[tuple[str, list]], outputs: list[tuple[str, list, list]],
                    emap: bool = False) -> Path:
    """An ONNX model with the given declared inputs and outputs. Each output is a constant of its
    *actual* shape (the third item), so a dynamic declaration can hide a wrong real shape."""
    nodes, inits = [], []
    first = inputs[0][0]
    nodes.append(helper.make_node("ReduceMean", [first], ["m"], keepdims=0))
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    nodes.append(helper.make_node("Mul", ["m", "zero"], ["dep"]))
    for k in range(1, len(inputs)):  # every input is used
        nodes.append(helper.make_node("ReduceMean", [inputs[k][0]], [f"m{k}"], keepdims=0))
        nodes.append(helper.make_node("Mul", [f"m{k}", "zero"], [f"d{k}"]))
        nodes.append(helper.make_node("Add", ["dep" if k == 1 else f"dep{k - 1}", f"d{k}"], [f"dep{k}"]))
    dep = "dep" if len(inputs) == 1 else f"dep{len(inputs) - 1}"
    outs = []
    for name, declared, actual in outputs:
        c = np.full(actual, 0.25, np.float32)
        inits.append(numpy_helper.from_array(c, f"{name}_c"))
        src = f"{name}_c"
        if any(isinstance(d, str) for d in declared) and len(actual) == len(inputs[0][1]):
            # cut the constant to the input's size: its shape is known only when it runs, so only a
            # real run shows that it stays at ``actual`` when the input is larger
            nodes.append(helper.make_node("Shape", [first], [f"{name}_shape"]))
            inits.append(numpy_helper.from_array(np.zeros(len(actual), np.int64), f"{name}_starts"))
            nodes.append(helper.make_node("Slice", [src, f"{name}_starts", f"{name}_shape"], [f"{name}_cut"]))
            src = f"{name}_cut"
        nodes.append(helper.make_node("Add", [src, dep], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, declared))
    if emap:
        inits.append(numpy_helper.from_array(np.eye(512, dtype=np.float32), "emap"))
    graph = helper.make_graph(nodes, "sig", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                             for n, s in inputs], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


SWAPPER_IN = [("target", [1, 3, 128, 128]), ("source", [1, 512])]

# (what, builder kwargs, words the refusal must contain)
BAD_SWAPPERS = {
    "source is 1x256": (dict(inputs=[("target", [1, 3, 128, 128]), ("source", [1, 256])],
                             outputs=[("output", [1, 3, 128, 128], [1, 3, 128, 128])]),
                        ["'source' is 1x256", "expected 1x512"]),
    "output is 64x64": (dict(inputs=SWAPPER_IN, outputs=[("output", [1, 3, 64, 64], [1, 3, 64, 64])]),
                        ["output 0 is 1x3x64x64", "expected 1x3x128x128"]),
    "dynamic output that is really 64x64": (
        dict(inputs=[("target", [1, 3, "h", "w"]), ("source", [1, 512])],
             outputs=[("output", [1, 3, "h", "w"], [1, 3, 64, 64])]),
        ["output 0 is 1x3x64x64", "expected 1x3x128x128"]),
    "inputs named differently": (dict(inputs=[("img", [1, 3, 128, 128]), ("emb", [1, 512])],
                                      outputs=[("output", [1, 3, 128, 128], [1, 3, 128, 128])]),
                                 ["inputs are img 1x3x128x128, emb 1x512", "target 1x3xSxS, source 1x512"]),
    "one input only": (dict(inputs=[("target", [1, 3, 128, 128])],
                            outputs=[("output", [1, 3, 128, 128], [1, 3, 128, 128])]),
                       ["it has 1 input(s)"]),
}

BAD_RECOGNIZERS = {
    "output is 256": (dict(inputs=[("input.1", ["N", 3, 112, 112])], outputs=[("683", ["N", 256], [1, 256])]),
                      ["output 0 is 1x256", "expected 1x512"]),
    "dynamic output that is really 128": (
        dict(inputs=[("input.1", ["N", 3, 112, 112])], outputs=[("683", ["N", "d"], [1, 128])]),
        ["output 0 is 1x128", "expected 1x512"]),
    "input is 1x3x96x96": (dict(inputs=[("input.1", [1, 3, 96, 96])], outputs=[("683", [1, 512], [1, 512])]),
                           ["'input.1' is 1x3x96x96", "expected 1x3x112x112"]),
}

BAD_DETECTORS = {
    "three outputs": (dict(inputs=[("input.1", [1, 3, 640, 640])],
                           outputs=[(f"o{i}", [12800, 1], [12800, 1]) for i in range(3)]),
                      ["it has 3 output(s)", "expected 6 or 9"]),
    "an output of width 7": (dict(inputs=[("input.1", [1, 3, 640, 640])],
                                  outputs=[(f"o{i}", [12800, 7 if i == 0 else 1], [12800, 7 if i == 0 else 1])
                                           for i in range(6)]),
                             ["an output is 12800x7", "expected ?x1 or ?x4 or ?x10"]),
    "grey-scale input": (dict(inputs=[("input.1", [1, 1, 640, 640])],
                              outputs=[(f"o{i}", [12800, 1], [12800, 1]) for i in range(6)]),
                         ["'input.1' is 1x1x640x640", "expected 1x3xHxW"]),
}

BAD_ENHANCERS = {
    "output is 256": (dict(inputs=[("input", [1, 3, 512, 512])], outputs=[("output", [1, 3, 256, 256],
                                                                            [1, 3, 256, 256])]),
                      ["output 0 is 1x3x256x256", "expected 1x3x512x512"]),
    "dynamic output that is really 256": (
        dict(inputs=[("input", [1, 3, "h", "w"])], outputs=[("output", [1, 3, "h", "w"], [1, 3, 256, 256])]),
        ["output 0 is 1x3x256x256", "expected 1x3x512x512"]),
}


@pytest.mark.parametrize("case", list(BAD_SWAPPERS))
def test_a_wrong_swapper_is_refused_at_load(tmp_path, case):
    kw, words = BAD_SWAPPERS[case]
    h = create_session(build_signature(tmp_path / "swap.onnx", emap=True, **kw))
    with pytest.raises(ModelError) as e:
        InSwapper(h)
    msg = str(e.value)
    assert "is not a face swapper (inswapper) model" in msg and "mirage models download" in msg
    for w in words:
        assert w in msg


REFUSERS = [(ArcFace, "arc.onnx", kw, words) for kw, words in BAD_RECOGNIZERS.values()] + \
           [(SCRFD, "det.onnx", kw, words) for kw, words in BAD_DETECTORS.values()]


REFUSER_IDS = [f"{c.__name__}:{n}" for (c, _, _, _), n in zip(REFUSERS, [*BAD_RECOGNIZERS, *BAD_DETECTORS])]


@pytest.mark.parametrize("cls,file,kw,words", REFUSERS, ids=REFUSER_IDS)
def test_a_wrong_recognizer_or_detector_is_refused_at_load(tmp_path, cls, file, kw, words):
    h = create_session(build_signature(tmp_path / file, **kw))
    with pytest.raises(ModelError) as e:
        cls(h)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("case", list(BAD_ENHANCERS))
def test_a_wrong_enhancer_is_refused_at_load(tmp_path, case):
    kw, words = BAD_ENHANCERS[case]
    with pytest.raises(ModelError) as e:
        GFPGANEnhancer(build_signature(tmp_path / "gfpgan.onnx", **kw))
    for w in words:
        assert w in str(e.value)


def test_the_real_signatures_pass(tmp_path):
    """The synthetic models carry the production signatures: the contracts accept them."""
    paths = synthetic.build_model_set(tmp_path, [], 640)
    assert InSwapper(create_session(paths["inswapper_128"])).size == 128
    assert ArcFace(create_session(paths["w600k_r50"])).size == 112
    assert SCRFD(create_session(paths["det_10g"])).fixed_size == 640
    GFPGANEnhancer(synthetic.build_gfpgan(tmp_path / "gfpgan.onnx"))


ALL_BAD = [("inswapper_128", kw, w) for kw, w in BAD_SWAPPERS.values()] + \
          [("w600k_r50", kw, w) for kw, w in BAD_RECOGNIZERS.values()] + \
          [("det_10g", kw, w) for kw, w in BAD_DETECTORS.values()]


@pytest.mark.parametrize("slot,kw,words", ALL_BAD, ids=[f"{s}:{i}" for i, (s, _, _) in enumerate(ALL_BAD)])
def test_the_engine_falls_back_to_pass_through_and_says_why(tmp_path, model_factory, astronaut, slot, kw, words):
    models = model_factory(astronaut)
    bad = build_signature(tmp_path / f"{slot}.onnx", emap=slot == "inswapper_128", **kw)
    overrides = {**models, slot: bad}
    if slot == "inswapper_128":
        overrides["inswapper_128_fp16"] = bad
    engine = Engine(Settings(), model_overrides=overrides)
    st = engine.load_models()  # never raises
    text = " | ".join(st.problems)
    for w in words:
        assert w in text
    if slot != "det_10g":
        engine.set_source_photos([astronaut])  # a refused recognizer: no embedding, said so
        assert engine.status().passthrough, "a refused model must leave the stream in pass-through"
    else:
        assert st.detector == "opencv-haar"  # the built-in detector takes over, and the problem is listed


def test_mirage_swap_with_a_wrong_swapper_says_which_shape_is_wrong(tmp_path, model_factory, astronaut, capsys):
    import cv2

    models = model_factory(astronaut)
    src = tmp_path / "me.png"
    cv2.imwrite(str(src), astronaut)
    bad = build_signature(tmp_path / "bad.onnx", emap=True, **BAD_SWAPPERS["source is 1x256"][0])
    args = ["swap", "--source", str(src), "--target", str(src), "-o", str(tmp_path / "out.png"),
            "--confirm-rights", "--model", f"det_10g={models['det_10g']}",
            "--model", f"w600k_r50={models['w600k_r50']}",
            "--model", f"inswapper_128={bad}", "--model", f"inswapper_128_fp16={bad}"]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("mirage: error")]
    assert len(lines) == 1 and "'source' is 1x256" in lines[0] and "expected 1x512" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("case", list(BAD_ENHANCERS))
def test_a_wrong_enhancer_leaves_the_swap_running_and_says_why(tmp_path, model_factory, astronaut, case):
    kw, words = BAD_ENHANCERS[case]
    models = model_factory(astronaut)
    models["gfpgan_1_4"] = build_signature(tmp_path / "gfpgan_1_4.onnx", **kw)
    engine = Engine(Settings(enable_enhancer=True, enhancer="gfpgan"), model_overrides=models)
    st = engine.load_models()
    assert st.enhancer == "none" and st.swapper != "none"
    text = " | ".join(st.problems)
    assert "enhancer:" in text and all(w in text for w in words)
    engine.set_source_photos([astronaut])
    assert engine.status().passthrough == []  # the swap itself is unaffected


def test_an_enhancer_whose_image_is_not_its_first_output_is_accepted(tmp_path):
    p = build_signature(tmp_path / "cf.onnx", inputs=[("x", [1, 3, 512, 512])],
                        outputs=[("logits", [1, 256, 1024], [1, 256, 1024]), ("y", [1, 3, 512, 512], [1, 3, 512, 512])])
    enh = GFPGANEnhancer(p)
    assert enh._output == "y" and enh.size == 512


def test_a_model_declaring_a_gigantic_input_is_refused_not_allocated(tmp_path):
    p = build_signature(tmp_path / "det.onnx", inputs=[("input.1", [1, 3, "H", 1_000_000_000])],
                        outputs=[(f"o{i}", [12800, 1], [12800, 1]) for i in range(6)])
    with pytest.raises(ModelError, match="far larger than any face detector"):
        SCRFD(create_session(p))


def test_a_fixed_size_detector_says_det_size_is_not_used(model_factory, astronaut):
    from mirage_desktop.vision.analysis import FaceAnalyzer

    models = model_factory(astronaut)  # the synthetic detector is a static 640 export
    a = FaceAnalyzer.load(320, overrides=models)
    assert any("only runs at 640 px, so det_size 320 is not used" in p.message for p in a.status.problems)
