"""The speed paths keep the results: the paste-back against a plain float blend, the static-shape
detector and the derived-model cache, the emap cache, and the gate the detector and the swapper
share on the CPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mirage_desktop.models import derived
from mirage_desktop.models.runtime import create_session
from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.vision.align import align_matrix, invert_affine
from mirage_desktop.vision.blend import face_mask, paste_back
from mirage_desktop.vision.cores import CoreGate, share_cores
from mirage_desktop.vision.detector import SCRFD
from mirage_desktop.vision.swapper import read_emap

KPS = np.array([[601.0, 211.0], [683.0, 214.0], [640.0, 258.0], [602.0, 291.0], [679.0, 293.0]])


@pytest.mark.parametrize("mouth", [False, True])
def test_paste_back_is_the_masked_blend_inside_the_oval_only(mouth):
    import cv2

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (720, 1280, 3), np.uint8)
    # a face-like (smooth) crop: OpenCV warps in 1/32 px steps, which noise would turn into error
    fake = cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3), np.uint8), (0, 0), 3)
    m, mask = align_matrix(KPS, 128), face_mask(128, mouth)
    out = frame.copy()
    x0, y0, x1, y1 = paste_back(out, fake, m, mask)
    # the reference: warp the crop and the mask over the whole frame, blend in float
    im = invert_affine(m)
    warped = cv2.warpAffine(fake, im, (1280, 720), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(mask, im, (1280, 720), flags=cv2.INTER_LINEAR)[..., None]
    ref = np.clip(warped * a + frame * (1 - a) + 0.5, 0, 255).astype(np.uint8)
    err = np.abs(out.astype(int) - ref)
    assert err.max() <= 3 and err.mean() < 0.05
    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (out[outside] == frame[outside]).all()
    assert (a[..., 0][outside] < 1 / 255).all()  # the box holds all of the mask


def test_a_free_size_detector_runs_on_a_static_session_cached_for_the_next_start(tmp_path, monkeypatch):
    import onnx

    monkeypatch.setenv("MIRAGE_CACHE_DIR", str(tmp_path / "cache"))
    face = synthetic.ScriptedFace((200, 150, 330, 300), np.array([[240, 210], [290, 210], [265, 240],
                                                                     [245, 265], [285, 265]], float))
    p = synthetic.build_scrfd(tmp_path / "det_10g.onnx", [face], 640)
    model = onnx.load(str(p))
    for d, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w")):
        d.Clear()
        d.dim_param = name  # as the real det_10g: a free input size
    onnx.save(model, str(p))
    free = SCRFD(create_session(p, "cpu"))
    assert free.handle.inputs[0].shape[2:] == ["h", "w"]
    h = create_session(p, "cpu", static_inputs={"*": [1, 3, 640, 640]})
    assert h.inputs[0].shape == [1, 3, 640, 640] and h.declared_shapes["input.1"][2:] == ["h", "w"]
    det = SCRFD(h, det_size=640)
    assert det.fixed_size is None  # the file is free-size: det_size may still change
    img = np.zeros((640, 640, 3), np.uint8)
    a, b = free.detect(img), det.detect(img)
    assert len(a) == len(b) == 1 and np.allclose(a[0].bbox, b[0].bbox) and np.allclose(a[0].kps, b[0].kps)
    cached = list((tmp_path / "cache" / "derived").glob("det_10g-*.onnx"))
    assert len(cached) == 1
    onnx_model = onnx.load(str(cached[0]))
    assert [d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 640, 640]
    # the next start uses the cached file; a replaced model file is derived anew
    h2 = create_session(p, "cpu", static_inputs={"*": [1, 3, 640, 640]})
    assert h2.inputs[0].shape == [1, 3, 640, 640]
    synthetic.build_scrfd(p, [face], 640, seed=5)
    assert derived.derived_path(p, "x", ".json") != derived.derived_path(tmp_path / "other.onnx", "x", ".json")
    h3 = create_session(p, "cpu", static_inputs={"*": [1, 3, 640, 640]})
    assert h3.declared_shapes["input.1"] == [1, 3, 640, 640]  # the new file is a static export
    assert len(list((tmp_path / "cache" / "derived").glob("det_10g-*.json"))) == 2


def test_the_emap_is_cached_and_read_anew_for_a_new_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRAGE_CACHE_DIR", str(tmp_path / "cache"))
    p = synthetic.build_inswapper(tmp_path / "inswapper_128.onnx", seed=2)
    first = read_emap(p)
    (cached,) = (tmp_path / "cache" / "derived").glob("inswapper_128-*.npy")
    np.testing.assert_array_equal(np.load(cached), first)
    np.testing.assert_array_equal(read_emap(p), first)
    synthetic.build_inswapper(p, seed=9)  # another model in the same place
    other = read_emap(p)
    assert not np.array_equal(other, first)


def test_the_detector_gets_the_next_turn_at_the_gate():
    gate = CoreGate()
    order, holding, release = [], threading.Event(), threading.Event()

    def hold():
        with gate.turn():
            holding.set()
            release.wait(10)

    def call(name, priority):
        with gate.turn(priority):
            order.append(name)

    t0 = threading.Thread(target=hold)
    t0.start()
    assert holding.wait(10)
    swap = threading.Thread(target=call, args=("swap", False))
    swap.start()
    with gate._cv:
        assert gate._cv.wait_for(lambda: gate.waiting == 1, 10)
    det = threading.Thread(target=call, args=("detect", True))
    det.start()
    with gate._cv:
        assert gate._cv.wait_for(lambda: gate.waiting == 2, 10)
    release.set()
    for t in (t0, swap, det):
        t.join(10)
    assert order == ["detect", "swap"]


def test_cores_are_shared_on_the_cpu_only(tmp_path):
    sw = create_session(synthetic.build_inswapper(tmp_path / "s.onnx"), "cpu")
    rec = create_session(synthetic.build_arcface(tmp_path / "r.onnx"), "cpu")
    gate = share_cores([sw], [rec])
    assert gate is not None and sw.gate is gate and rec.gate is gate and rec.gate_priority and not sw.gate_priority
    out = sw.run({"target": np.zeros((1, 3, 128, 128)), "source": np.zeros((1, 512))})
    assert out[0].shape == (1, 3, 128, 128)

    class OnGpu:
        provider = "CUDAExecutionProvider"

    assert share_cores([sw], [OnGpu()]) is None


def test_a_free_batch_swapper_swaps_all_faces_in_one_call_as_one_by_one(tmp_path, t1_path):
    from mirage_desktop.commands.bench import six_face_frame
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.vision.face import Face
    from mirage_desktop.vision.stages import FrameContext, SwapStage
    from mirage_desktop.vision.swapper import InSwapper

    frame, faces, _ = six_face_frame(1280, 720)
    faces = [Face(b, k, 0.9) for b, k in faces]
    one = InSwapper(create_session(synthetic.build_inswapper(tmp_path / "one.onnx"), "cpu"))
    many = InSwapper(create_session(synthetic.build_inswapper(tmp_path / "many.onnx", batch="N"), "cpu"))
    assert not one.batchable and many.batchable
    latent = one.latent(np.ones(512, np.float32))
    out = {}
    for name, sw in (("one", one), ("many", many)):
        m = Metrics()
        ctx = FrameContext(frame.copy(), opts=_Opts(), faces=faces)
        SwapStage(lambda sw=sw: sw, lambda: latent, None, m).process(ctx)
        out[name] = (ctx.frame, ctx.swapped, m.histogram("swap.model").count)
    assert out["one"][1] == out["many"][1] == 6
    assert out["one"][2] == 6 and out["many"][2] == 1  # model calls
    assert np.abs(out["one"][0].astype(int) - out["many"][0]).max() <= 1
    assert (out["one"][0] != frame).any()


class _Opts:
    enable_mouth_mask = False
    enable_color_transfer = False


def test_warm_up_runs_each_gpu_session_once(tmp_path, monkeypatch):
    from mirage_desktop.models import loader

    calls = []
    h = create_session(synthetic.build_inswapper(tmp_path / "s.onnx"), "cpu")
    real = type(h).run
    monkeypatch.setattr(type(h), "run", lambda self, feeds, names=None: calls.append(
        {k: v.shape for k, v in feeds.items()}) or real(self, feeds, names))
    loader.warm_up([h])
    assert calls == [{"target": (1, 3, 128, 128), "source": (1, 512)}]


@pytest.mark.parametrize("side_by_side", [False, True])
def test_the_swapper_loads_beside_the_analyzer_on_a_gpu(model_factory, astronaut, monkeypatch, side_by_side):
    from mirage_desktop.config import Settings
    from mirage_desktop.models import loader, runtime

    real, where = runtime.create_session, {}

    def create(path, *a, **k):
        where[path.name] = threading.current_thread().name
        return real(path, *a, **k)

    from mirage_desktop.vision import analysis

    monkeypatch.setattr(runtime, "create_session", create)
    monkeypatch.setattr(analysis, "create_session", create)
    monkeypatch.setattr(loader, "loads_side_by_side", lambda providers: side_by_side)
    ms = loader.load_face_models(Settings(providers="cpu"), model_factory(astronaut))
    assert ms.swapper is not None and ms.swapper_name == "inswapper_128_fp16" and ms.analyzer.recognizer is not None
    swap_thread = where["inswapper_128.onnx"]
    assert (swap_thread == "mirage-load-swapper") is side_by_side
    assert where["det_10g.onnx"] == threading.current_thread().name


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_swapped_crop_converts_to_the_same_bytes_as_the_plain_transpose(dtype):
    from mirage_desktop.vision.swapper import _to_bgr

    rng = np.random.default_rng(5)
    chw = (rng.random((3, 128, 128)) * 1.4 - 0.2).astype(dtype)  # beyond [0, 1] on both sides
    ref = np.clip(chw.astype(np.float32)[::-1].transpose(1, 2, 0), 0, 1) * 255.0
    out = _to_bgr(chw)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.rint(ref).astype(int)).max() == 0
