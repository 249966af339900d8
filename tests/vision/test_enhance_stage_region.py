"""EnhanceStage: touches only the face's region (all the swap changed, the chin too), runs every
k-th frame and re-uses a result that follows the face, blends, survives a failing model, and
reports its own metric stages."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mirage_desktop.errors import ModelError
from mirage_desktop.metrics import Metrics
from mirage_desktop.vision.align import FFHQ_512
from mirage_desktop.vision.enhancer import EnhanceStage, check_enhancer, face_box, paste_region
from mirage_desktop.vision.face import Face

GREEN = np.array([0, 255, 0], np.uint8)


class SolidEnhancer:
    """Returns a solid green crop, so where it lands in the frame is obvious."""

    name = "solid"
    provider = "test"
    supports_fidelity = True

    def __init__(self, size: int = 128):
        self.size = size
        self.calls = 0
        self.fidelity = None

    def enhance(self, crop):
        assert crop.shape == (self.size, self.size, 3) and crop.dtype == np.uint8
        self.calls += 1
        return np.broadcast_to(GREEN, crop.shape).copy()

    def set_fidelity(self, w):
        self.fidelity = w


class Boom(SolidEnhancer):
    def enhance(self, crop):
        raise RuntimeError("CUDA out of memory")


def make_face(cx: float, cy: float, scale: float = 0.5, track_id: int = 1) -> Face:
    """A face whose keypoints are the FFHQ template scaled and centred at (cx, cy)."""
    kps = (FFHQ_512 - FFHQ_512.mean(0)) * scale + (cx, cy)
    x0, y0 = kps.min(0) - (45 * scale, 90 * scale)
    x1, y1 = kps.max(0) + (45 * scale, 60 * scale)
    return Face(bbox=np.array([x0, y0, x1, y1]), kps=kps, score=0.9, track_id=track_id)


def make_frame(h=240, w=320, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, (h, w, 3), dtype=np.uint8)  # never pure green


def region(face, shape):
    """The box the stage may touch for ``face``."""
    return paste_region(face, shape)[0]


def outside(frame, box):
    x0, y0, x1, y1 = box
    m = np.ones(frame.shape[:2], bool)
    m[y0:y1, x0:x1] = False
    return frame[m]


def centre_px(frame, face):
    c = face.kps.mean(0).round().astype(int)
    return frame[c[1], c[0]].astype(int)


def test_only_the_face_region_changes_and_metrics_are_recorded():
    enh = SolidEnhancer()
    metrics = Metrics()
    stage = EnhanceStage(enh, metrics=metrics)
    frame = make_frame()
    face = make_face(150, 120)
    before = frame.copy()
    stage.process(frame, [face])
    box = region(face, frame.shape)
    np.testing.assert_array_equal(outside(frame, box), outside(before, box))
    assert (centre_px(frame, face) == GREEN).all()
    x0, y0, x1, y1 = box
    assert (frame[y0:y1, x0:x1] != before[y0:y1, x0:x1]).any(axis=2).mean() > 0.3
    # the region's edge itself is feathered to nothing: no seam
    np.testing.assert_array_equal(frame[y0, x0:x1], before[y0, x0:x1])
    snap = metrics.snapshot()
    assert snap["stages"]["enhance"]["count"] == 1
    assert snap["stages"]["enhance.model"]["count"] == 1
    assert metrics.counter("enhance.runs") == 1


def test_real_codeformer_touches_only_the_face_region():
    torch = pytest.importorskip("torch")
    from mirage_desktop.vision.codeformer_arch import CodeFormer
    from mirage_desktop.vision.enhancer import CodeFormerEnhancer

    torch.manual_seed(0)
    net = CodeFormer(dim_embd=64, n_head=2, n_layers=1, codebook_size=64, latent_size=256,
                     connect_list=("32", "64"), img_size=64, nf=32, ch_mult=(1, 1, 2), emb_dim=32)
    stage = EnhanceStage(CodeFormerEnhancer.from_network(net), blend=0.8)
    frame = make_frame(seed=3)
    face = make_face(170, 110, scale=0.45)
    before = frame.copy()
    stage.process(frame, [face])
    box = region(face, frame.shape)
    np.testing.assert_array_equal(outside(frame, box), outside(before, box))
    assert not np.array_equal(frame, before)


def test_every_third_frame_reuses_a_result_that_follows_the_face():
    enh = SolidEnhancer()
    metrics = Metrics()
    stage = EnhanceStage(enh, interval=3, metrics=metrics)
    for i in range(7):
        frame = make_frame(seed=i)
        face = make_face(100 + 15 * i, 120)  # the face moves 15 px a frame
        before = frame.copy()
        stage.process(frame, [face])
        box = region(face, frame.shape)
        np.testing.assert_array_equal(outside(frame, box), outside(before, box))
        assert (centre_px(frame, face) == GREEN).all(), f"frame {i}: result did not follow the face"
        ys, xs = np.nonzero((frame == GREEN).all(axis=2))
        centroid = np.array([xs.mean(), ys.mean()])
        offset = centroid - face.kps.mean(0)  # where the green lands relative to the face
        if i == 0:
            offset0 = offset
        assert np.abs(offset - offset0).max() < 1.0, f"frame {i}: pasted {offset - offset0} px off the face"
    assert enh.calls == 3  # frames 0, 3, 6
    assert metrics.counter("enhance.reused") == 4
    assert metrics.snapshot()["stages"]["enhance.model"]["count"] == 3
    assert metrics.snapshot()["stages"]["enhance"]["count"] == 7


def test_tracks_are_enhanced_independently_and_untracked_faces_every_frame():
    enh = SolidEnhancer()
    stage = EnhanceStage(enh, interval=4)
    faces = [make_face(90, 120, 0.35, track_id=1), make_face(230, 120, 0.35, track_id=2)]
    for _ in range(4):
        stage.process(make_frame(), faces)
    assert enh.calls == 2
    enh.calls = 0
    for _ in range(3):
        stage.process(make_frame(), [make_face(150, 120, track_id=-1)])
    assert enh.calls == 3


def test_blend_mixes_raw_and_enhanced_and_zero_is_off():
    enh = SolidEnhancer()
    stage = EnhanceStage(enh, blend=0.5)
    frame = np.full((240, 320, 3), 100, np.uint8)
    face = make_face(160, 120)
    stage.process(frame, [face])
    np.testing.assert_allclose(centre_px(frame, face), [50, 178, 50], atol=2)
    stage.set_blend(0.0)
    frame = make_frame()
    before = frame.copy()
    calls = enh.calls
    stage.process(frame, [face])
    np.testing.assert_array_equal(frame, before)
    assert enh.calls == calls
    with pytest.raises(ValueError):
        stage.set_blend(1.5)
    with pytest.raises(ValueError):
        stage.set_interval(0)


def test_set_fidelity_reaches_the_model_and_refreshes_cached_faces():
    enh = SolidEnhancer()
    stage = EnhanceStage(enh, interval=10)
    face = make_face(160, 120)
    stage.process(make_frame(), [face])
    stage.process(make_frame(), [face])
    assert enh.calls == 1
    stage.set_fidelity(0.3)
    assert enh.fidelity == 0.3
    stage.process(make_frame(), [face])
    assert enh.calls == 2


def test_live_changes_from_another_thread_while_processing():
    stage = EnhanceStage(SolidEnhancer(), interval=1)
    stop = threading.Event()

    def tweak():
        k = 0
        while not stop.is_set():
            stage.set_interval(1 + k % 3)
            stage.set_blend((k % 10) / 10)
            stage.set_fidelity((k % 5) / 5)
            k += 1

    t = threading.Thread(target=tweak)
    t.start()
    try:
        for i in range(30):
            frame = make_frame(seed=i)
            face = make_face(120 + i, 120)
            before = frame.copy()
            stage.process(frame, [face])
            box = region(face, frame.shape)
            np.testing.assert_array_equal(outside(frame, box), outside(before, box))
    finally:
        stop.set()
        t.join()


def test_a_failing_model_leaves_the_frame_alone():
    metrics = Metrics()
    stage = EnhanceStage(Boom(), metrics=metrics)
    frame = make_frame()
    before = frame.copy()
    stage.process(frame, [make_face(160, 120)])
    np.testing.assert_array_equal(frame, before)
    assert metrics.counter("errors.enhance_model") == 1
    assert "CUDA out of memory" in stage.last_error


def test_faces_at_the_frame_edge_and_off_frame():
    stage = EnhanceStage(SolidEnhancer())
    frame = make_frame()
    before = frame.copy()
    stage.process(frame, [make_face(10, 10), make_face(-500, -500, track_id=2)])
    box = region(make_face(10, 10), frame.shape)
    np.testing.assert_array_equal(outside(frame, box), outside(before, box))


def test_contract_is_checked_at_load():
    class NoEnhance:
        name, size, provider, supports_fidelity = "x", 512, "cpu", False

        def set_fidelity(self, w):
            pass

    with pytest.raises(ModelError, match="missing enhance"):
        check_enhancer(NoEnhance())
    with pytest.raises(ModelError):
        EnhanceStage(NoEnhance())


# ---- the enhancer covers what the swap changed ------------------------------------------------------

class Inverted(SolidEnhancer):
    """Returns the crop inverted: every pixel it is pasted over visibly changes."""

    def enhance(self, crop):
        self.calls += 1
        return 255 - crop


@pytest.fixture(scope="module")
def swapper(tmp_path_factory):
    from mirage_desktop.models.runtime import create_session
    from mirage_desktop.testing import face_models as synthetic
    from mirage_desktop.vision.swapper import InSwapper

    return InSwapper(create_session(synthetic.build_inswapper(tmp_path_factory.mktemp("sw") / "inswapper_128.onnx")))


def _rows_cols(changed):
    return set(np.nonzero(changed.any(axis=1))[0]), set(np.nonzero(changed.any(axis=0))[0])


@pytest.mark.parametrize("boost", [1, 2])
def test_every_row_and_column_the_swap_changed_is_enhanced(swapper, astronaut, boost):
    """On a real photo the detector's box is tight: the swap's oval reaches below it (the chin)
    and past its sides. The enhancer pastes over all of it, and nothing outside its region."""
    from mirage_desktop.vision.blend import swap_region
    from mirage_desktop.vision.detector import HaarFaceDetector

    (face,) = HaarFaceDetector().detect(astronaut)
    swapped = astronaut.copy()
    box = swapper.swap(swapped, face, swapper.latent(np.ones(512, np.float32)), boost=boost)
    if boost == 1:
        assert box == swap_region(face.kps, astronaut.shape)  # the box the paste-back wrote in
    enhanced = swapped.copy()
    EnhanceStage(Inverted(512)).process(enhanced, [face])
    by_swap = np.any(swapped != astronaut, axis=2)
    by_enhancer = np.any(enhanced != swapped, axis=2)
    rows, cols = _rows_cols(by_swap)
    e_rows, e_cols = _rows_cols(by_enhancer)
    assert len(rows & e_rows) >= 0.99 * len(rows) and len(cols & e_cols) >= 0.99 * len(cols)
    assert by_enhancer[by_swap].mean() >= 0.99  # pixel by pixel too, not just somewhere in the row
    x0, y0, x1, y1 = face_box(face, astronaut.shape)  # the detector's box alone misses a band
    assert len([r for r in rows if y0 <= r < y1]) < 0.95 * len(rows)
    np.testing.assert_array_equal(outside(enhanced, region(face, astronaut.shape)),
                                  outside(swapped, region(face, astronaut.shape)))


def test_the_region_is_the_detectors_box_joined_with_the_swaps_grown_by_the_ramp():
    from mirage_desktop.vision.blend import swap_region

    face = make_face(150, 120)
    (x0, y0, x1, y1), f = paste_region(face, (240, 320, 3))
    fb, sb = face_box(face, (240, 320, 3)), swap_region(face.kps, (240, 320, 3))
    assert f >= 2
    assert (x0, y0) == (min(fb[0], sb[0]) - f, min(fb[1], sb[1]) - f)
    assert (x1, y1) == (max(fb[2], sb[2]) + f, max(fb[3], sb[3]) + f)
    (cx0, cy0, cx1, cy1), _ = paste_region(make_face(10, 10), (240, 320, 3))  # clipped to the frame
    assert (cx0, cy0) == (0, 0) and cx1 > 10 and cy1 > 10
    assert paste_region(make_face(-500, -500), (240, 320, 3)) is None
