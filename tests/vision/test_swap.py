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


# ---- pixel boost: n*n interleaved 128 px tiles of a 128*n crop -------------------------------------

class CountingHandle:
    """The real session, with the target blob shape of every call written down."""

    def __init__(self, handle):
        self._handle = handle
        self.targets: list[tuple] = []

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def run(self, feeds, outputs):
        self.targets.append(feeds["target"].shape)
        return self._handle.run(feeds, outputs)


def _counting(path) -> InSwapper:
    sw = InSwapper(create_session(path))
    sw.handle = CountingHandle(sw.handle)
    return sw


@pytest.fixture(scope="module")
def swapper_path(tmp_path_factory):
    return synthetic.build_inswapper(tmp_path_factory.mktemp("sw1") / "inswapper_128.onnx")


@pytest.fixture(scope="module")
def batch_path(tmp_path_factory):
    return synthetic.build_inswapper(tmp_path_factory.mktemp("swN") / "inswapper_128.onnx", batch="N")


def test_boost_1_is_the_plain_128_path_bit_for_bit(swapper_path, astronaut):
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.vision.align import warp_crop
    from mirage_desktop.vision.blend import paste_back

    sw = _counting(swapper_path)
    (face,) = HaarFaceDetector().detect(astronaut)
    latent = sw.latent(np.ones(512, np.float32))
    default, boost1, by_hand = astronaut.copy(), astronaut.copy(), astronaut.copy()
    sw.swap(default, face, latent)
    sw.handle.targets.clear()
    metrics = Metrics()
    box = sw.swap(boost1, face, latent, boost=1, metrics=metrics)
    assert sw.handle.targets == [(1, 3, 128, 128)]  # one call, one 128 px blob
    assert metrics.gauge("swap.boost") == 1 and metrics.histogram("swap.model").count == 1
    m = align_matrix(face.kps, 128)  # the 128 px path spelled out: align, swap, oval, paste
    assert paste_back(by_hand, sw.swap_crop(warp_crop(by_hand, m, 128), latent), m, face_mask(128)) == box
    np.testing.assert_array_equal(boost1, default)
    np.testing.assert_array_equal(boost1, by_hand)
    assert not np.array_equal(boost1, astronaut)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_split_then_merge_gives_the_crop_back_and_each_tile_sees_the_whole_face(n):
    from mirage_desktop.vision.swapper import merge_tiles, split_tiles

    crop = np.random.default_rng(n).integers(0, 256, (128 * n, 128 * n, 3), dtype=np.uint8)
    tiles = split_tiles(crop, n)
    assert len(tiles) == n * n and all(t.shape == (128, 128, 3) and t.flags.c_contiguous for t in tiles)
    np.testing.assert_array_equal(tiles[n * n - 1], crop[n - 1::n, n - 1::n])  # tile (i, j) = crop[i::n, j::n]
    np.testing.assert_array_equal(merge_tiles(tiles, n), crop)
    if n > 1:
        assert not np.array_equal(merge_tiles(tiles[::-1], n), crop)  # the order matters
        with pytest.raises(ValueError):
            merge_tiles(tiles[1:], n)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_a_boosted_crop_is_swapped_as_n_by_n_tiles(swapper_path, batch_path, astronaut, n):
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.vision.align import warp_crop

    (face,) = HaarFaceDetector().detect(astronaut)
    crop = warp_crop(astronaut, align_matrix(face.kps, 128 * n), 128 * n)
    one, batched = _counting(swapper_path), _counting(batch_path)
    latent = one.latent(np.ones(512, np.float32))
    metrics = Metrics()
    out = one.swap_crop_boosted(crop, latent, n, metrics)
    assert out.shape == (128 * n, 128 * n, 3) and out.dtype == np.uint8
    assert one.handle.targets == [(1, 3, 128, 128)] * (n * n)  # the published file: one call per tile
    assert metrics.histogram("swap.model").count == 1  # the face's model time, once
    out_b = batched.swap_crop_boosted(crop, latent, n)
    assert batched.handle.targets == [(n * n, 3, 128, 128)]  # a free batch size: every tile in one call
    assert np.abs(out_b.astype(int) - out.astype(int)).max() <= 1
    with pytest.raises(ValueError):
        one.swap_crop_boosted(crop[:128, :128], latent, n)  # a crop of the wrong size


@pytest.mark.parametrize("n", [2, 4])
def test_each_swapped_tile_goes_back_where_it_came_from(swapper_path, astronaut, n):
    """The synthetic swapper works pixel by pixel, so the right reassembly of the interleaved
    tiles is the same image as swapping the crop in plain 128 px blocks; a tile put back one
    place off would move every pixel by one, which the photo does not survive."""
    from mirage_desktop.vision.align import warp_crop

    sw = InSwapper(create_session(swapper_path))
    (face,) = HaarFaceDetector().detect(astronaut)
    crop = warp_crop(astronaut, align_matrix(face.kps, 128 * n), 128 * n)
    latent = sw.latent(np.random.default_rng(5).standard_normal(512))
    boosted = sw.swap_crop_boosted(crop, latent, n).astype(int)
    blocks = np.zeros_like(boosted)
    for by in range(n):
        for bx in range(n):
            part = (slice(128 * by, 128 * (by + 1)), slice(128 * bx, 128 * (bx + 1)))
            blocks[part] = sw.swap_crop(np.ascontiguousarray(crop[part]), latent)
    assert np.abs(boosted - blocks).max() <= 1
    assert np.abs(blocks - np.roll(blocks, 1, axis=1)).max() > 20  # one pixel off would show


@pytest.mark.parametrize("n", [2, 3])
def test_a_boosted_swap_changes_only_the_faces_region(swapper_path, astronaut, n):
    from mirage_desktop.metrics import Metrics

    sw = _counting(swapper_path)
    (face,) = HaarFaceDetector().detect(astronaut)
    latent = sw.latent(np.ones(512, np.float32))
    plain, boosted = astronaut.copy(), astronaut.copy()
    box1 = sw.swap(plain, face, latent)
    sw.handle.targets.clear()
    metrics = Metrics()
    box = sw.swap(boosted, face, latent, boost=n, metrics=metrics)
    assert len(sw.handle.targets) == n * n and metrics.gauge("swap.boost") == n * n
    x0, y0, x1, y1 = box
    diff = np.any(boosted != astronaut, axis=2)
    outside = diff.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()
    assert diff.sum() > 0.2 * (x1 - x0) * (y1 - y0)
    cx, cy = face.center.astype(int)
    assert diff[cy - 5:cy + 5, cx - 5:cx + 5].all()
    assert np.abs(np.subtract(box, box1)).max() <= 3  # the same oval, pasted from a finer crop
    # the same face, with more detail: close to the 128 px swap, not equal to it
    inside = (slice(y0, y1), slice(x0, x1))
    err = np.abs(boosted[inside].astype(int) - plain[inside].astype(int))
    assert err.mean() < 4 and err.max() > 0


def test_the_mask_and_colour_hooks_get_the_big_crop(swapper_path, astronaut):
    sw = InSwapper(create_session(swapper_path))
    (face,) = HaarFaceDetector().detect(astronaut)
    seen = []

    def mask_fn(f, crop, base):
        seen.append(("mask", crop.shape, base.shape))
        return base

    def color_fn(fake, crop, mask, f):
        seen.append(("color", fake.shape, crop.shape, mask.shape, f is face))
        return fake

    sw.swap(astronaut.copy(), face, sw.latent(np.ones(512)), mask_fn=mask_fn, color_fn=color_fn, boost=2)
    assert seen == [("mask", (256, 256, 3), (256, 256)), ("color", (256, 256, 3), (256, 256, 3), (256, 256), True)]


@pytest.mark.parametrize("batch", [1, "N"])
def test_swap_many_boosted_is_one_call_for_every_tile_of_every_face(tmp_path, astronaut, batch):
    sw = _counting(synthetic.build_inswapper(tmp_path / "inswapper_128.onnx", batch=batch))
    two = np.ascontiguousarray(np.hstack([astronaut, astronaut[:, ::-1]]))
    faces = sorted(HaarFaceDetector().detect(two), key=lambda f: f.bbox[0])
    rng = np.random.default_rng(4)
    lat = np.concatenate([sw.latent(rng.standard_normal(512)), sw.latent(rng.standard_normal(512))])
    many = two.copy()
    boxes = sw.swap_many(many, faces, lat, boost=2)
    if batch == "N":
        assert sw.handle.targets == [(8, 3, 128, 128)]  # 2 faces x 2x2 tiles in one call
    else:
        assert sw.handle.targets == [(1, 3, 128, 128)] * 8  # face by face, tile by tile
    one_by_one = two.copy()
    expect = [sw.swap(one_by_one, f, lat[i:i + 1], boost=2) for i, f in enumerate(faces)]
    assert boxes == expect
    assert np.abs(many.astype(int) - one_by_one.astype(int)).max() <= 1


def test_the_swap_stage_passes_the_pixel_boost(swapper_path, astronaut):
    from mirage_desktop.config import Settings
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.vision.stages import FrameContext, SwapStage

    sw = _counting(swapper_path)
    (face,) = HaarFaceDetector().detect(astronaut)
    latent = sw.latent(np.ones(512, np.float32))
    metrics = Metrics()
    stage = SwapStage(lambda: sw, lambda: latent, None, metrics)
    for px, n in ((128, 1), (256, 2), (512, 4)):
        sw.handle.targets.clear()
        ctx = FrameContext(astronaut.copy(), opts=Settings(pixel_boost=px), faces=[face])
        stage.process(ctx)
        direct = astronaut.copy()
        sw.swap(direct, face, latent, boost=n)
        assert len(sw.handle.targets) == 2 * n * n and metrics.gauge("swap.boost") == n * n
        np.testing.assert_array_equal(ctx.frame, direct)
        assert ctx.swapped == 1
