"""inswapper: latent from the emap, swap on the aligned crop, paste-back only in the face box."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.models.runtime import create_session
from mirage_desktop.vision.align import align_matrix, arcface_template, transform_points
from mirage_desktop.vision.blend import draw_ai_mark, face_mask, roi_of
from mirage_desktop.vision.detector import HaarFaceDetector
from mirage_desktop.vision.swapper import InSwapper


@pytest.fixture(scope="module")
def swapper(tmp_path_factory):
    p = synthetic.build_inswapper(tmp_path_factory.mktemp("sw") / "inswapper_128.onnx")
    return InSwapper(create_session(p))


def test_emap_is_the_last_initializer_and_latent_is_normalised(swapper):
    model = onnx.load(str(swapper.handle.path))
    emap = numpy_helper.to_array(model.graph.initializer[-1])
    np.testing.assert_array_equal(swapper.emap, emap)
    e = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    lat = swapper.latent(e * 7.0)
    expect = (e / np.linalg.norm(e)) @ emap
    np.testing.assert_allclose(lat[0], expect / np.linalg.norm(expect), rtol=1e-5)
    assert lat.shape == (1, 512) and np.linalg.norm(lat) == pytest.approx(1.0, abs=1e-5)


def test_alignment_puts_keypoints_on_the_template(astronaut):
    (face,) = HaarFaceDetector().detect(astronaut)
    m = align_matrix(face.kps, 128)
    # a similarity cannot hit 5 points exactly; the residual is a few pixels on a 128 px crop
    assert np.abs(transform_points(m, face.kps) - arcface_template(128)).max() < 6


def test_paste_back_changes_pixels_only_inside_the_face_box(swapper, astronaut):
    (face,) = HaarFaceDetector().detect(astronaut)
    frame = astronaut.copy()
    latent = swapper.latent(np.ones(512, np.float32))
    box = swapper.swap(frame, face, latent)
    x0, y0, x1, y1 = box
    diff = np.any(frame != astronaut, axis=2)
    assert diff.sum() > 0.2 * (x1 - x0) * (y1 - y0)  # the face really changed
    outside = diff.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()
    # the box is the face's neighbourhood, not the frame
    assert (x1 - x0) * (y1 - y0) < 0.15 * astronaut.shape[0] * astronaut.shape[1]
    # the face centre changed, the feathered corners of the box did not
    cx, cy = face.center.astype(int)
    assert diff[cy - 5:cy + 5, cx - 5:cx + 5].all()
    assert not diff[y0, x0] and not diff[y1 - 1, x1 - 1]


def test_different_identities_give_different_faces(swapper, astronaut):
    (face,) = HaarFaceDetector().detect(astronaut)
    rng = np.random.default_rng(1)
    a, b = astronaut.copy(), astronaut.copy()
    swapper.swap(a, face, swapper.latent(rng.standard_normal(512)))
    swapper.swap(b, face, swapper.latent(rng.standard_normal(512)))
    assert np.abs(a.astype(int) - b.astype(int)).sum() > 1000


def test_mouth_mask_keeps_the_users_mouth(swapper, astronaut):
    (face,) = HaarFaceDetector().detect(astronaut)
    latent = swapper.latent(np.ones(512, np.float32))
    plain, mouth = astronaut.copy(), astronaut.copy()
    swapper.swap(plain, face, latent)
    swapper.swap(mouth, face, latent, mouth_mask=True)
    mx, my = ((face.kps[3] + face.kps[4]) / 2).astype(int)
    region = (slice(my - 2, my + 3), slice(mx - 3, mx + 4))
    assert np.abs(mouth[region].astype(int) - astronaut[region]).max() <= 2  # own mouth kept
    assert np.abs(plain[region].astype(int) - astronaut[region]).max() > 20  # swapped without the mask
    m = face_mask(128, mouth=True)
    t = arcface_template(128)
    assert m[int(t[2, 1]), int(t[2, 0])] > 0.9  # the nose is still swapped


def test_fp16_swapper_model_runs(tmp_path, astronaut):
    sw = InSwapper(create_session(synthetic.build_inswapper(tmp_path / "inswapper_128_fp16.onnx", fp16=True)))
    (face,) = HaarFaceDetector().detect(astronaut)
    frame = astronaut.copy()
    assert sw.swap(frame, face, sw.latent(np.ones(512))) is not None
    assert np.any(frame != astronaut)


def test_ai_mark_is_visible_and_only_in_the_corner(astronaut):
    frame = astronaut.copy()
    draw_ai_mark(frame)
    diff = np.any(frame != astronaut, axis=2)
    ys, xs = np.nonzero(diff)
    assert diff.sum() > 200
    assert ys.min() > 0.8 * frame.shape[0] and xs.min() > 0.8 * frame.shape[1]


def test_roi_of_off_frame_face_is_none():
    m = align_matrix(np.array([[-500, -500], [-460, -500], [-480, -480], [-495, -460], [-465, -460]], float), 128)
    assert roi_of(m, 128, (100, 100, 3)) is None


def test_mask_fn_replaces_the_blend_mask(swapper, astronaut):
    """The hook the parser mask uses: its mask, not the oval, decides which pixels change."""
    (face,) = HaarFaceDetector().detect(astronaut)
    latent = swapper.latent(np.ones(512, np.float32))
    seen = []

    def left_half(f, crop, base):
        seen.append((f is face, crop.shape, base.shape))
        m = base.copy()
        m[:, 64:] = 0.0
        return m

    frame = astronaut.copy()
    swapper.swap(frame, face, latent, mask_fn=left_half)
    assert seen == [(True, (128, 128, 3), (128, 128))]
    diff = np.any(frame != astronaut, axis=2)
    nose_x, nose_y = face.kps[2].astype(int)
    assert diff[nose_y - 5:nose_y + 5, nose_x - 25:nose_x - 10].any()  # the face's left half swapped
    assert not diff[nose_y - 5:nose_y + 5, nose_x + 10:nose_x + 25].any()  # its right half kept
    untouched = astronaut.copy()
    swapper.swap(untouched, face, latent, mask_fn=lambda f, c, b: np.zeros_like(b))
    np.testing.assert_array_equal(untouched, astronaut)


@pytest.mark.parametrize("batch", [1, "N"])
def test_swap_many_takes_one_latent_per_face(tmp_path, astronaut, batch):
    sw = InSwapper(create_session(synthetic.build_inswapper(tmp_path / "inswapper_128.onnx", batch=batch)))
    two = np.ascontiguousarray(np.hstack([astronaut, astronaut[:, ::-1]]))  # two people, apart
    faces = sorted(HaarFaceDetector().detect(two), key=lambda f: f.bbox[0])
    assert len(faces) == 2
    rng = np.random.default_rng(3)
    la, lb = sw.latent(rng.standard_normal(512)), sw.latent(rng.standard_normal(512))
    each = two.copy()
    sw.swap_many(each, faces, np.concatenate([la, lb]))
    one_by_one = two.copy()
    sw.swap(one_by_one, faces[0], la)
    sw.swap(one_by_one, faces[1], lb)
    assert np.abs(each.astype(int) - one_by_one.astype(int)).max() <= 1
    swapped_a = two.copy()
    sw.swap(swapped_a, faces[1], la)
    assert np.abs(each.astype(int) - swapped_a.astype(int))[:, two.shape[1] // 2:].max() > 20  # b's, not a's
    with pytest.raises(ValueError):
        sw.swap_many(two.copy(), faces, np.concatenate([la, lb, la]))
