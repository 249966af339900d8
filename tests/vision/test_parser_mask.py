"""The occlusion-aware mask: a face parser of the real signature decides which pixels are swapped."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mirage_desktop.config import Settings
from mirage_desktop.errors import ModelError
from mirage_desktop.metrics import Metrics
from mirage_desktop.models.runtime import create_session
from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.vision.detector import HaarFaceDetector
from mirage_desktop.vision.parser import FaceParser, ParseStage, labels_to_mask, region_classes
from mirage_desktop.vision.stages import FrameContext, ParseFrames, SwapStage, run_stages
from mirage_desktop.vision.swapper import InSwapper


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("parser")
    parser = FaceParser(create_session(synthetic.build_parser(d / "bisenet_resnet_18.onnx")))
    swapper = InSwapper(create_session(synthetic.build_inswapper(d / "inswapper_128.onnx")))
    return parser, swapper


def _face(img):
    (face,) = HaarFaceDetector().detect(img)
    face.track_id = 1
    return face


def _swap(models, frame, face, **opts):
    """Run parse → swap on ``frame`` in place (inline parser); returns the frame's changed pixels."""
    parser, swapper = models
    o = Settings(enable_parser=True, parser_interval=1, mask_smoothing=0.0).replace(**opts)
    stage = ParseStage(parser, Metrics(), background=False)
    latent = swapper.latent(np.ones(512, np.float32))
    before = frame.copy()
    ctx = FrameContext(frame, opts=o, faces=[face])
    errors = []
    run_stages([ParseFrames(lambda: stage), SwapStage(lambda: swapper, lambda: latent, None, Metrics())], ctx,
               Metrics(), lambda n, e: errors.append((n, e)) if e else None)
    assert not errors
    return np.any(frame != before, axis=2)


def _bar_across_mouth(img, face):
    """A solid green bar across the mouth (an occluder: a hand, a microphone)."""
    out = img.copy()
    (lx, ly), (rx, ry) = face.kps[3], face.kps[4]
    eye = float(np.linalg.norm(face.kps[1] - face.kps[0]))
    y = int(round((ly + ry) / 2))
    h = int(round(0.18 * eye))
    x0, x1 = int(lx - 0.5 * eye), int(rx + 0.5 * eye)
    out[y - h:y + h, x0:x1] = (0, 255, 0)
    return out, (slice(y - h, y + h), slice(x0, x1))


def test_an_occluder_in_front_of_the_mouth_stays_while_the_face_is_swapped(models, astronaut):
    face = _face(astronaut)
    img, (ys, xs) = _bar_across_mouth(astronaut, face)
    frame = img.copy()
    changed = _swap(models, frame, face)
    inner = (slice(ys.start + 2, ys.stop - 2), slice(xs.start + 2, xs.stop - 2))
    np.testing.assert_array_equal(frame[inner], img[inner])  # the bar: exactly as the camera saw it
    nx, ny = face.kps[2].astype(int)
    assert changed[ny - 4:ny + 4, nx - 4:nx + 4].all()  # the nose: swapped
    lx, ly = face.kps[0].astype(int)
    assert changed[ly + 12:ly + 20, lx - 4:lx + 4].mean() > 0.9  # a cheek under the eye: swapped
    # without the parser the same bar is painted over
    plain = img.copy()
    _, swapper = models
    swapper.swap(plain, face, swapper.latent(np.ones(512, np.float32)))
    assert np.any(plain[inner] != img[inner], axis=2).mean() > 0.5


def test_the_chosen_regions_decide_which_pixels_change(models, astronaut):
    face = _face(astronaut)
    with_nose = _swap(models, astronaut.copy(), face, parser_regions="skin,nose,eyes,brows,lips,mouth")
    without_nose = _swap(models, astronaut.copy(), face, parser_regions="skin,eyes,brows,lips,mouth")
    nx, ny = face.kps[2].astype(int)
    nose = (slice(ny - 3, ny + 3), slice(nx - 2, nx + 2))
    assert with_nose[nose].all()
    assert not without_nose[nose].any()  # the user's own nose
    # only the nose region differs between the two: the cheeks are swapped in both
    lx, ly = face.kps[0].astype(int)
    cheek = (slice(ly + 12, ly + 20), slice(lx - 4, lx + 4))
    assert with_nose[cheek].all() and without_nose[cheek].all()
    skin_only = _swap(models, astronaut.copy(), face, parser_regions="skin")
    ex, ey = face.kps[0].astype(int)
    eye = (slice(ey - 1, ey + 2), slice(ex - 1, ex + 2))
    assert with_nose[eye].all() and not skin_only[eye].any()  # the eyes: swapped only when chosen


def test_region_lists_map_to_the_parser_classes():
    assert region_classes("skin,nose") == (1, 10)
    assert region_classes(["brows", "eyes", "lips"]) == (2, 3, 4, 5, 12, 13)
    lab = np.zeros((256, 256), np.uint8)
    lab[64:192, 64:192] = 10
    m = labels_to_mask(lab, (10,))
    assert m[128, 128] == 1.0 and m[10, 10] == 0.0
    assert m[62, 128] == 0.0 and m[64, 128] < 0.5  # feathered inwards: nothing outside the region


def _flicker(models, frames, face, smoothing: float) -> float:
    parser, _ = models
    stage = ParseStage(parser, Metrics(), background=False)
    o = Settings(enable_parser=True, parser_interval=1, mask_smoothing=smoothing)
    masks = []
    for img in frames:
        f = type(face)(face.bbox.copy(), face.kps.copy(), face.score, track_id=1)
        stage.process(FrameContext(img, opts=o, faces=[f]))
        masks.append(f.extra["parse_mask"].copy())
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(masks[1:], masks[:-1])]))


def test_mask_smoothing_lowers_frame_to_frame_flicker_on_a_noisy_still(models, astronaut):
    face = _face(astronaut)
    img, _ = _bar_across_mouth(astronaut, face)
    rng = np.random.default_rng(7)
    frames = [np.clip(img.astype(np.int16) + rng.normal(0, 10, img.shape).astype(np.int16), 0, 255).astype(np.uint8)
              for _ in range(12)]
    raw = _flicker(models, frames, face, 0.0)
    smooth = _flicker(models, frames, face, 0.6)
    assert raw > 1e-3  # the noise does make the unsmoothed mask flicker
    assert smooth < 0.6 * raw


def test_between_parses_the_last_mask_follows_the_face(models, astronaut):
    """parser_interval 3: two of three frames re-use the labels, in the aligned crop's coordinates."""
    parser, _ = models
    metrics = Metrics()
    stage = ParseStage(parser, metrics, background=False)
    face = _face(astronaut)
    o = Settings(enable_parser=True, parser_interval=3)
    for i in range(6):
        shift = np.array([i * 3.0, 0.0])
        f = type(face)(face.bbox + np.tile(shift, 2), face.kps + shift, face.score, track_id=1)
        stage.process(FrameContext(astronaut, opts=o, faces=[f]))
        assert f.extra["parse_mask"].shape == (256, 256)
    assert metrics.counter("parse.runs") == 2 and metrics.counter("parse.reused") == 4


def test_the_background_parser_never_holds_up_the_frame(models, astronaut):
    parser, _ = models
    metrics = Metrics()
    stage = ParseStage(parser, metrics, background=True)
    face = _face(astronaut)
    o = Settings(enable_parser=True, parser_interval=1)
    try:
        f = type(face)(face.bbox, face.kps, face.score, track_id=1)
        stage.process(FrameContext(astronaut, opts=o, faces=[f]))
        assert "parse_mask" not in f.extra  # the first labels are not ready: the plain mask this frame
        assert stage.finished.wait(60)
        f = type(face)(face.bbox, face.kps, face.score, track_id=1)
        stage.process(FrameContext(astronaut, opts=o, faces=[f]))
        assert f.extra["parse_mask"].shape == (256, 256)
        stage.reset()
        f = type(face)(face.bbox, face.kps, face.score, track_id=1)
        stage.process(FrameContext(astronaut, opts=o, faces=[f]))
        assert "parse_mask" not in f.extra  # reset: masks from before are gone
    finally:
        stage.close()


class _Broken:
    def labels(self, crop):
        raise RuntimeError("the GPU fell off")


def test_a_failing_parser_leaves_the_plain_mask_and_says_so(models, astronaut):
    _, swapper = models
    stage = ParseStage(_Broken(), Metrics(), background=False)
    face = _face(astronaut)
    latent = swapper.latent(np.ones(512, np.float32))
    frame = astronaut.copy()
    errors = {}
    ctx = FrameContext(frame, opts=Settings(enable_parser=True), faces=[face])
    run_stages([ParseFrames(lambda: stage), SwapStage(lambda: swapper, lambda: latent, None, Metrics())], ctx,
               Metrics(), lambda n, e: errors.__setitem__(n, e))
    assert "the face parser fails" in str(errors["parse"]) and errors["swap"] is None
    assert ctx.swapped == 1  # the face is still swapped, with the oval mask
    plain = astronaut.copy()
    swapper.swap(plain, face, latent)
    np.testing.assert_array_equal(frame, plain)


def _model(tmp_path, in_shape, out_shape):
    w = onnx.numpy_helper.from_array(np.zeros((out_shape[1], in_shape[1], 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"], kernel_shape=[1, 1])], "p",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path = tmp_path / "parser.onnx"
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("in_shape,out_shape", [([1, 3, 256, 256], [1, 19, 256, 256]),
                                                ([1, 3, 512, 512], [1, 11, 512, 512])])
def test_a_model_of_another_signature_is_refused_by_name(tmp_path, in_shape, out_shape):
    with pytest.raises(ModelError) as e:
        FaceParser(create_session(_model(tmp_path, in_shape, out_shape)))
    assert "is not a face parser" in str(e.value) and "bisenet_resnet_18" in e.value.fix


def test_a_stage_on_metrics_with_old_parser_errors_does_not_report_them(models, astronaut):
    """The metrics are the engine's (they outlive a parser replaced after a download): a new stage
    judges its own runs only."""
    parser, _ = models
    metrics = Metrics()
    metrics.incr("errors.parse_model", 3)
    stage = ParseStage(parser, metrics, background=False)
    f = _face(astronaut)
    stage.process(FrameContext(astronaut, opts=Settings(enable_parser=True), faces=[f]))  # no raise
    assert "parse_mask" in f.extra


def test_a_retired_stage_starts_no_thread(models, astronaut):
    parser, _ = models
    stage = ParseStage(parser, Metrics(), background=True)
    stage.retire()
    f = _face(astronaut)
    stage.process(FrameContext(astronaut, opts=Settings(enable_parser=True), faces=[f]))
    assert not stage._worker.running


def test_a_parse_mask_is_used_on_its_own_frame_only(models, astronaut):
    """Face objects can live on across frames (the tracker's, without smoothing): a frame the parser
    did not run on must not be swapped with an old mask."""
    parser, swapper = models
    face = _face(astronaut)
    stage = ParseStage(parser, Metrics(), background=False)
    latent = swapper.latent(np.ones(512, np.float32))
    o = Settings(enable_parser=True)
    swap = SwapStage(lambda: swapper, lambda: latent, None, Metrics())
    ctx = FrameContext(astronaut.copy(), opts=o, faces=[face])
    run_stages([ParseFrames(lambda: stage), swap], ctx, Metrics(), lambda n, e: None)
    assert "parse_mask" not in face.extra  # consumed by the swap
    again = astronaut.copy()
    swap.process(FrameContext(again, opts=o, faces=[face]))  # the parse stage gone (a failed reload)
    plain = astronaut.copy()
    swapper.swap(plain, face, latent)
    np.testing.assert_array_equal(again, plain)  # the plain oval, not the last frame's mask


def test_the_combined_mask_is_made_once_per_parse():
    """Between parses the face's region mask is the same object: the swap's mask is re-used, and a
    new mask (a new parse) gives a new one."""
    from mirage_desktop.vision.blend import face_mask
    from mirage_desktop.vision.parser import combine

    base = face_mask(256)
    region = np.zeros((256, 256), np.float32)
    region[40:200, 60:180] = 1.0
    region.setflags(write=False)
    first = combine(base, region)
    np.testing.assert_array_equal(first, np.minimum(base, region))
    assert combine(base, region) is first and not first.flags.writeable
    newer = region.copy()
    newer[100:140] = 0.0
    newer.setflags(write=False)
    assert combine(base, newer) is not first
    np.testing.assert_array_equal(combine(base, newer), np.minimum(base, newer))
    writable = newer.copy()  # a mask that may change: never kept
    assert combine(base, writable) is not combine(base, writable)
