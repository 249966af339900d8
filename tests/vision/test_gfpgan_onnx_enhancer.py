"""GFPGANEnhancer runs a real ONNX model with the common export's signature (input ``input``
1x3x512x512 float32 RGB [-1, 1], generated output name), through the project's session factory."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mirage_desktop.config import Settings
from mirage_desktop.errors import ModelError
from mirage_desktop.vision.enhancer import GFPGANEnhancer, load_enhancer


def _save(model, path):
    model.opset_import[0].version = 13
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def negate_model(path, size=512):
    """output = -input: in [-1, 1] RGB that is the colour negative, easy to check exactly."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("1392", TensorProto.FLOAT, [1, 3, size, size])
    g = helper.make_graph([helper.make_node("Neg", ["input"], ["1392"])], "gfpgan_like", [x], [y])
    return _save(helper.make_model(g), path)


def weighted_model(path, size=512):
    """output = input * weight, with a double scalar ``weight`` input like CodeFormer ONNX exports."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    w = helper.make_tensor_value_info("weight", TensorProto.DOUBLE, [1])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])
    nodes = [helper.make_node("Cast", ["weight"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["input", "wf"], ["output"])]
    return _save(helper.make_model(helper.make_graph(nodes, "cf_like", [x, w], [y])), path)


def test_gfpgan_onnx_enhances_a_512_crop(tmp_path):
    enh = GFPGANEnhancer(negate_model(tmp_path / "gfpgan_1_4.onnx"), providers="cpu")
    assert enh.name == "gfpgan" and enh.size == 512 and enh.provider == "CPUExecutionProvider"
    assert not enh.supports_fidelity
    crop = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    out = enh.enhance(crop)
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    # RGB/BGR order and [-1, 1] scaling round-trip exactly: -x in [-1,1] is 255 - x in 0..255
    np.testing.assert_array_equal(out, 255 - crop)
    enh.set_fidelity(0.2)  # a no-op, but part of the contract


def test_a_fidelity_input_is_fed(tmp_path):
    enh = GFPGANEnhancer(weighted_model(tmp_path / "w.onnx"), providers="cpu", fidelity=1.0)
    assert enh.supports_fidelity
    crop = np.full((512, 512, 3), 200, np.uint8)
    np.testing.assert_array_equal(enh.enhance(crop), crop)
    enh.set_fidelity(0.0)
    np.testing.assert_array_equal(enh.enhance(crop), np.full_like(crop, 128))  # 0 in [-1, 1]


def test_load_enhancer_with_settings_and_explicit_path(tmp_path):
    p = negate_model(tmp_path / "g.onnx")
    enh = load_enhancer("gfpgan", Settings(providers="cpu"), path=p)
    assert enh.name == "gfpgan"
    enh2 = load_enhancer(None, {"enhancer": "gfpgan", "providers": "cpu"}, path=p)
    assert enh2.size == 512
    with pytest.raises(ModelError, match="unknown enhancer 'sharpen'.*codeformer, gfpgan"):
        load_enhancer("sharpen", Settings(), path=p)


def test_wrong_models_are_refused_clearly(tmp_path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 512])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 512])
    flat = _save(helper.make_model(helper.make_graph([helper.make_node("Neg", ["input"], ["out"])], "g", [x], [y])),
                 tmp_path / "flat.onnx")
    with pytest.raises(ModelError, match="expected one 1x3xSxS image input.*--force gfpgan_1_4"):
        GFPGANEnhancer(flat, providers="cpu")
    broken = tmp_path / "broken.onnx"
    data = negate_model(tmp_path / "ok.onnx").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        GFPGANEnhancer(broken, providers="cpu")
