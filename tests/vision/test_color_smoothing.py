"""Colour transfer over time: per-face smoothing of the statistics, so the face's tone is steady."""

from __future__ import annotations

import numpy as np

from mirage_desktop.vision.blend import face_mask
from mirage_desktop.vision.color import ColorTransfer, match_color
from mirage_desktop.vision.face import Face


def _crops(astronaut, n=16, seed=3):
    """A still face crop seen n times with sensor noise and an exposure that wobbles ±6 levels."""
    rng = np.random.default_rng(seed)
    target = np.ascontiguousarray(astronaut[30:158, 170:298])
    swapped = np.ascontiguousarray(target[:, ::-1] // 2 + 60)  # another face, another tone
    out = []
    for i in range(n):
        wobble = 6.0 * (1 if i % 2 else -1)
        t = np.clip(target + rng.normal(wobble, 4, target.shape), 0, 255).astype(np.uint8)
        s = np.clip(swapped + rng.normal(0, 4, swapped.shape), 0, 255).astype(np.uint8)
        out.append((s, t))
    return out


def _face(tid):
    return Face(np.zeros(4), np.zeros((5, 2)), 0.9, track_id=tid)


def _tone_changes(ct, crops, face):
    mask = face_mask(128)
    outs = [ct(s, t, mask, face).astype(np.float32) for s, t in crops]
    means = [o[mask > 0.5].mean(axis=0) for o in outs]
    return np.mean([np.abs(a - b).mean() for a, b in zip(means[1:], means[:-1])])


def test_smoothing_steadies_the_tone_of_a_still_face(astronaut):
    crops = _crops(astronaut)
    raw = _tone_changes(ColorTransfer(0.0), crops, _face(1))
    smooth = _tone_changes(ColorTransfer(0.8), crops, _face(1))
    assert raw > 2.0  # the exposure wobble does reach the face's tone without smoothing
    assert smooth < 0.5 * raw


def test_no_smoothing_is_the_plain_transfer_and_faces_keep_their_own_statistics(astronaut):
    (s, t), (s2, t2) = _crops(astronaut, 2)
    mask = face_mask(128)
    np.testing.assert_array_equal(ColorTransfer(0.0)(s, t, mask, _face(1)), match_color(s, t, mask))
    ct = ColorTransfer(0.9)
    ct(s, t, mask, _face(1))
    # a second face (another track) starts from its own statistics, not the first one's
    np.testing.assert_array_equal(ct(s2, t2, mask, _face(2)), match_color(s2, t2, mask))
    # a face without a track is never smoothed (it could be anyone next frame)
    np.testing.assert_array_equal(ct(s2, t2, mask, _face(-1)), match_color(s2, t2, mask))
    ct.reset()
    np.testing.assert_array_equal(ct(s2, t2, mask, _face(1)), match_color(s2, t2, mask))


def test_the_swap_stage_smooths_each_tracked_face_on_its_own(tmp_path, astronaut):
    from mirage_desktop.config import Settings
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.models.runtime import create_session
    from mirage_desktop.testing import face_models as synthetic
    from mirage_desktop.vision.detector import HaarFaceDetector
    from mirage_desktop.vision.stages import FrameContext, SwapStage
    from mirage_desktop.vision.swapper import InSwapper

    sw = InSwapper(create_session(synthetic.build_inswapper(tmp_path / "inswapper_128.onnx", batch="N")))
    two = np.ascontiguousarray(np.hstack([astronaut, astronaut[:, ::-1]]))
    faces = sorted(HaarFaceDetector().detect(two), key=lambda f: f.bbox[0])
    for tid, f in zip((4, 9), faces):
        f.track_id = tid
    ct = ColorTransfer(0.5)
    stage = SwapStage(lambda: sw, lambda: sw.latent(np.ones(512)), ct, Metrics())
    o = Settings(enable_color_transfer=True, color_smoothing=0.7, max_faces=2)
    stage.process(FrameContext(two.copy(), opts=o, faces=faces))  # batched: swap_many
    assert sorted(ct._state) == [4, 9] and ct.smoothing == 0.7  # the live setting, a state per track
    first = {k: v.copy() for k, v in ct._state.items()}
    stage.process(FrameContext(two.copy(), opts=o, faces=faces[:1]))  # one face: swap
    assert not np.array_equal(first[4], first[9])
    np.testing.assert_allclose(ct._state[9], first[9])  # the other face's statistics untouched
    stage.reset()
    assert not ct._state


def test_an_identity_switch_is_not_tinted_by_the_face_before(astronaut):
    """Only the scene's statistics are smoothed: after frames of one identity, the next identity's
    colour match is the one it would have had all along."""
    crops = _crops(astronaut, 6)
    mask = face_mask(128)
    other = [(np.ascontiguousarray(s[::-1]) // 3 + 120, t) for s, t in crops]  # another identity, another tone
    switched, always = ColorTransfer(0.8), ColorTransfer(0.8)
    for (s, t), (s2, _) in zip(crops[:-1], other[:-1]):
        switched(s, t, mask, _face(1))
        always(s2, t, mask, _face(1))
    s2, t = other[-1]
    np.testing.assert_array_equal(switched(s2, t, mask, _face(1)), always(s2, t, mask, _face(1)))
