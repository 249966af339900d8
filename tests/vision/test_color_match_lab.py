"""Colour transfer moves the swapped face's LAB mean (and spread) toward the target's, inside the mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from mirage_desktop.vision.align import align_matrix, warp_crop
from mirage_desktop.vision.blend import face_mask
from mirage_desktop.vision.color import lab_stats, match_color

# astronaut(): Eileen Collins, 512x512 RGB; approximate 5 keypoints of her face
ASTRONAUT_KPS = np.array([[202.0, 105.0], [249.0, 101.0], [230.0, 126.0], [208.0, 146.0], [247.0, 143.0]])


@pytest.fixture(scope="module")
def target_crop():
    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return warp_crop(img, align_matrix(ASTRONAUT_KPS, 128, "arcface"), 128)


def recolour(crop, gain=(1.25, 0.8, 0.7), bias=(10, -5, -20)):
    """A different complexion and lighting: cooler, bluer, lower contrast in red."""
    out = crop.astype(np.float32) * np.array(gain, np.float32) + np.array(bias, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def test_mean_colour_moves_to_the_target(target_crop):
    mask = face_mask(128)
    swapped = recolour(target_crop)
    mu_t, sd_t = lab_stats(target_crop, mask)
    mu_s, sd_s = lab_stats(swapped, mask)
    out = match_color(swapped, target_crop, mask)
    mu_o, sd_o = lab_stats(out, mask)
    before, after = np.linalg.norm(mu_s - mu_t), np.linalg.norm(mu_o - mu_t)
    assert before > 10  # the test case is a real colour difference (LAB units)
    assert after < 0.15 * before, (before, after)
    assert np.abs(sd_o - sd_t).sum() < 0.5 * np.abs(sd_s - sd_t).sum()
    assert out.shape == swapped.shape and out.dtype == np.uint8


def test_only_the_masked_region_is_measured(target_crop):
    """Paint the background of the target a loud colour: a masked transfer must ignore it."""
    mask = face_mask(128)
    loud = target_crop.copy()
    loud[mask < 0.01] = (255, 0, 255)
    swapped = recolour(target_crop)
    a = match_color(swapped, target_crop, mask)
    b = match_color(swapped, loud, mask)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 3
    c = match_color(swapped, loud, None)  # unmasked: the background drags the colour away
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_strength_and_degenerate_masks(target_crop):
    mask = face_mask(128)
    swapped = recolour(target_crop)
    np.testing.assert_array_equal(match_color(swapped, target_crop, mask, strength=0.0), swapped)
    mu_t = lab_stats(target_crop, mask)[0]
    full = np.linalg.norm(lab_stats(match_color(swapped, target_crop, mask), mask)[0] - mu_t)
    half = np.linalg.norm(lab_stats(match_color(swapped, target_crop, mask, strength=0.5), mask)[0] - mu_t)
    orig = np.linalg.norm(lab_stats(swapped, mask)[0] - mu_t)
    assert full < half < orig
    empty = np.zeros((128, 128), np.float32)
    np.testing.assert_array_equal(match_color(swapped, target_crop, empty), swapped)
    u8 = (mask * 255).astype(np.uint8)  # uint8 masks work as well, 0..255 or 0/1
    np.testing.assert_array_equal(match_color(swapped, target_crop, (mask >= 0.5).astype(np.uint8)),
                                  match_color(swapped, target_crop, mask))
    np.testing.assert_allclose(match_color(swapped, target_crop, u8).astype(int),
                               match_color(swapped, target_crop, mask).astype(int), atol=2)
