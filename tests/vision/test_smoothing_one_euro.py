"""One-Euro keypoint smoothing: jitter on a still face drops a lot, a real move is followed fast."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_desktop.vision.align import FFHQ_512
from mirage_desktop.vision.face import Face
from mirage_desktop.vision.smoothing import KeypointSmoother, OneEuroFilter

FPS = 30.0
NOISE_PX = 1.5  # detector keypoint noise, Gaussian sigma
STEP_AT, STEP_PX = 90, 60.0


def shaky_track(n=150, seed=0):
    """A still face (63 px between the eyes) with detector noise, then a sudden 60 px jump right."""
    rng = np.random.default_rng(seed)
    base = FFHQ_512 * 0.5 + (400, 200)
    truth = np.repeat(base[None], n, 0)
    truth[STEP_AT:, :, 0] += STEP_PX
    return truth, truth + rng.normal(0, NOISE_PX, truth.shape)


def jitter(track):
    """RMS of frame-to-frame motion while the face is still."""
    return float(np.sqrt(np.mean(np.diff(track[10:STEP_AT], axis=0) ** 2)))


def frames_to_follow(out, truth, tol=3.0, hold=20):
    err = np.abs(out[STEP_AT:] - truth[STEP_AT:]).max(axis=(1, 2))
    return next(i for i in range(len(err)) if (err[i:i + hold] < tol).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_smoother_cuts_jitter_4x_and_follows_a_jump_within_6_frames(seed):
    truth, noisy = shaky_track(seed=seed)
    sm = KeypointSmoother()
    out = np.array([sm(7, noisy[i], i / FPS) for i in range(len(noisy))])
    assert out.shape == noisy.shape
    ratio = jitter(noisy) / jitter(out)
    assert ratio >= 4.0, f"jitter only reduced {ratio:.2f}x"
    assert frames_to_follow(out, truth) <= 6
    # and it does not just freeze: on the still part it stays near the truth
    assert np.abs(out[10:STEP_AT] - truth[10:STEP_AT]).mean() < NOISE_PX


def test_constant_speed_pan_has_small_lag():
    rng = np.random.default_rng(3)
    base = FFHQ_512 * 0.5 + (200, 200)
    n, v = 90, 300.0 / FPS  # a 300 px/s pan
    truth = np.repeat(base[None], n, 0)
    truth[:, :, 0] += np.arange(n)[:, None] * v
    noisy = truth + rng.normal(0, NOISE_PX, truth.shape)
    f = OneEuroFilter()
    out = np.array([f(noisy[i], i / FPS) for i in range(n)])
    assert np.abs(out[15:] - truth[15:]).mean() < 2.5


def test_filter_basics():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    x0 = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(f(x0, 0.0), x0)  # first sample passes through
    y = f(x0 + 10, 1 / 30)
    assert (y > x0).all() and (y < x0 + 10).all()  # smoothed toward the new value
    np.testing.assert_array_equal(f(x0 + 10, 1 / 30), y)  # same timestamp: no change
    f.reset()
    np.testing.assert_array_equal(f(x0 + 10, 5.0), x0 + 10)
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0)


def test_tracks_are_independent_forget_and_jump_reset():
    sm = KeypointSmoother()
    a = FFHQ_512 * 0.5 + (100, 100)
    b = FFHQ_512 * 0.5 + (600, 100)
    sm(1, a, 0.0)
    sm(2, b, 0.0)
    out = sm(1, a + 2, 1 / FPS)
    assert np.abs(out - a).max() < 2  # smoothed, and not pulled toward track 2
    sm.forget(1)
    np.testing.assert_array_equal(sm(1, a + 2, 2 / FPS), a + 2)  # starts afresh
    # a track re-acquired far away snaps there instead of gliding across the frame
    np.testing.assert_array_equal(sm(2, b - 400, 1 / FPS), b - 400)
    # after a long gap the filter restarts too
    np.testing.assert_array_equal(sm(2, b, 10.0), b)
    sm.retain([2])
    assert list(sm._filters) == [2]


def test_apply_smooths_faces_in_place_and_keeps_the_raw_keypoints():
    sm = KeypointSmoother()
    kps = FFHQ_512 * 0.5
    face = Face(bbox=np.zeros(4), kps=kps.copy(), score=0.9, track_id=3)
    sm.apply([face], 0.0)
    face2 = Face(bbox=np.zeros(4), kps=kps + 1.0, score=0.9, track_id=3)
    untracked = Face(bbox=np.zeros(4), kps=kps + 1.0, score=0.9)
    sm.apply([face2, untracked], 1 / FPS)
    np.testing.assert_array_equal(face2.extra["kps_raw"], kps + 1.0)
    assert (face2.kps < kps + 1.0).all()
    np.testing.assert_array_equal(untracked.kps, kps + 1.0)
