"""Tiny ONNX models with the real RVC signatures, built with onnx.helper, for tests and the bench.

They are *not* voice models: the encoder is a linear projection of 320-sample frames, the
synthesizer renders a sine at ``pitchf`` (so a pitch shift is measurable) and touches every other
input with zero weight, the RMVPE model outputs a fixed salience peak. Signatures match
:mod:`.rvc`'s docstring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17


def _save(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mirage-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_content_encoder(path: Path, channels: int = 768, seed: int = 0) -> Path:
    """input ``source`` [1,1,T] (T multiple of 320) → ``embed`` [1,T/320,C]."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(seed).standard_normal((320, channels)) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["source", "frame_shape"], ["frames"]),
        helper.make_node("MatMul", ["frames", "W"], ["embed"]),
    ]
    graph = helper.make_graph(
        nodes, "content_encoder",
        [helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 1, "T"])],
        [helper.make_tensor_value_info("embed", TensorProto.FLOAT, [1, "F", channels])],
        [numpy_helper.from_array(np.array([1, -1, 320], np.int64), "frame_shape"), numpy_helper.from_array(w, "W")],
    )
    return _save(graph, path)


def build_synthesizer(path: Path, channels: int = 768, sr: int = 40000) -> Path:
    """phone, phone_lengths, pitch, pitchf, ds, rnd → ``audio`` [1,1,N*sr/100]: 3 harmonics of pitchf."""
    from onnx import TensorProto, helper, numpy_helper

    hop = sr // 100
    f = TensorProto.FLOAT
    i64 = TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("phone", f, [1, "N", channels]),
        helper.make_tensor_value_info("phone_lengths", i64, [1]),
        helper.make_tensor_value_info("pitch", i64, [1, "N"]),
        helper.make_tensor_value_info("pitchf", f, [1, "N"]),
        helper.make_tensor_value_info("ds", i64, [1]),
        helper.make_tensor_value_info("rnd", f, [1, 192, "N"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([1, 1, hop], np.int64), "up_shape"),
        numpy_helper.from_array(np.array([1, 1, -1], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array(2, np.int64), "axis_scalar"),
        numpy_helper.from_array(np.array(2 * np.pi / sr, np.float32), "w"),
        numpy_helper.from_array(np.array(0.2, np.float32), "amp"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(3.0, np.float32), "three"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(1.0 / 3.0, np.float32), "third"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["pitchf", "ax2"], ["pf3"]),
        helper.make_node("Expand", ["pf3", "up_shape"], ["pf_up"]),
        helper.make_node("Reshape", ["pf_up", "flat_shape"], ["pf_flat"]),
        helper.make_node("CumSum", ["pf_flat", "axis_scalar"], ["cyc"]),
        helper.make_node("Mul", ["cyc", "w"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["sine"]),
        helper.make_node("Mul", ["phase", "two"], ["phase2"]),
        helper.make_node("Sin", ["phase2"], ["sine2"]),
        helper.make_node("Mul", ["phase", "three"], ["phase3"]),
        helper.make_node("Sin", ["phase3"], ["sine3"]),
        helper.make_node("Mul", ["sine2", "half"], ["h2"]),
        helper.make_node("Mul", ["sine3", "third"], ["h3"]),
        helper.make_node("Sum", ["sine", "h2", "h3"], ["voice"]),
        helper.make_node("Mul", ["voice", "amp"], ["base"]),
        # every other input takes part with zero weight, so the graph really consumes them
        helper.make_node("ReduceMean", ["phone"], ["m_phone"], keepdims=0),
        helper.make_node("ReduceMean", ["rnd"], ["m_rnd"], keepdims=0),
        helper.make_node("Cast", ["pitch"], ["pitch_f"], to=f),
        helper.make_node("ReduceMean", ["pitch_f"], ["m_pitch"], keepdims=0),
        helper.make_node("Cast", ["ds"], ["ds_f"], to=f),
        helper.make_node("ReduceMean", ["ds_f"], ["m_ds"], keepdims=0),
        helper.make_node("Cast", ["phone_lengths"], ["len_f"], to=f),
        helper.make_node("ReduceMean", ["len_f"], ["m_len"], keepdims=0),
        helper.make_node("Sum", ["m_phone", "m_rnd", "m_pitch", "m_ds", "m_len"], ["others"]),
        helper.make_node("Mul", ["others", "zero"], ["nothing"]),
        helper.make_node("Add", ["base", "nothing"], ["audio"]),
    ]
    graph = helper.make_graph(nodes, "rvc_synthesizer", inputs,
                              [helper.make_tensor_value_info("audio", f, [1, 1, "S"])], inits)
    return _save(graph, path)


def build_rmvpe(path: Path, f0_hz: float = 200.0) -> Path:
    """input [1,128,F] log-mel → output [1,F,360] salience with a fixed peak at ``f0_hz``."""
    from onnx import TensorProto, helper, numpy_helper

    cents = 1200.0 * np.log2(f0_hz / 10.0)
    bins = (cents - 1997.3794084376191) / 20.0
    sal = np.exp(-0.5 * ((np.arange(360) - bins) / 1.5) ** 2).astype(np.float32)[None, None, :]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Transpose", ["m"], ["mt"], perm=[0, 2, 1]),
        helper.make_node("Mul", ["mt", "zero"], ["z"]),
        helper.make_node("Add", ["z", "salience"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "rmvpe",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 128, "F"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, "F", 360])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero"), numpy_helper.from_array(sal, "salience")],
    )
    return _save(graph, path)


def build_all(folder: Path, f0_hz: float = 200.0) -> dict[str, Path]:
    folder = Path(folder)
    return {
        "model": build_synthesizer(folder / "synthesizer.onnx"),
        "encoder": build_content_encoder(folder / "vec-768.onnx"),
        "rmvpe": build_rmvpe(folder / "rmvpe.onnx", f0_hz=f0_hz),
    }
