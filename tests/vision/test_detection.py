"""SCRFD decoding on models with the real signature, the built-in detector on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_desktop.errors import ModelError
from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.models.runtime import create_session
from mirage_desktop.vision.detector import SCRFD, HaarFaceDetector

KPS = np.array([[150, 180], [210, 180], [180, 220], [155, 260], [205, 260]], float)


def _scrfd(tmp_path, faces, size=640, name="det.onnx"):
    return SCRFD(create_session(synthetic.build_scrfd(tmp_path / name, faces, size)), det_size=size)


def test_scrfd_decodes_boxes_keypoints_and_scores(tmp_path):
    faces = [synthetic.ScriptedFace((100, 120, 260, 300), KPS, 0.95),
             synthetic.ScriptedFace((400, 380, 440, 430), KPS * 0.25 + [362, 335], 0.8)]
    det = _scrfd(tmp_path, faces)
    found = det.detect(np.zeros((640, 640, 3), np.uint8))
    assert len(found) == 2  # duplicates from the second anchor were suppressed by NMS
    big, small = found  # largest first
    np.testing.assert_allclose(big.bbox, [100, 120, 260, 300], atol=0.01)
    np.testing.assert_allclose(big.kps, KPS, atol=0.01)
    assert big.score == pytest.approx(0.95, abs=1e-3)
    np.testing.assert_allclose(small.bbox, [400, 380, 440, 430], atol=0.01)


def test_scrfd_maps_letterboxed_coordinates_back_to_the_frame(tmp_path):
    # a 1280x720 frame is scaled by 0.5 into the 640 input; faces come back in frame pixels
    frame_faces = [(np.array([200.0, 240, 520, 600]), KPS * 2)]
    scripted = synthetic.scripted_faces_for_image((720, 1280, 3), frame_faces, 640)
    det = _scrfd(tmp_path, scripted)
    (f,) = det.detect(np.zeros((720, 1280, 3), np.uint8))
    np.testing.assert_allclose(f.bbox, [200, 240, 520, 600], atol=0.05)
    np.testing.assert_allclose(f.kps, KPS * 2, atol=0.05)


def test_scrfd_at_320_and_threshold(tmp_path):
    faces = [synthetic.ScriptedFace((50, 60, 130, 150), KPS / 2, 0.45)]
    det = _scrfd(tmp_path, faces, size=320)
    assert det.detect(np.zeros((320, 320, 3), np.uint8)) == []  # below the 0.5 threshold
    det.threshold = 0.4
    assert len(det.detect(np.zeros((320, 320, 3), np.uint8))) == 1


def test_a_model_that_is_not_scrfd_is_refused(tmp_path):
    h = create_session(synthetic.build_arcface(tmp_path / "arc.onnx"))
    with pytest.raises(ModelError, match="SCRFD"):
        SCRFD(h)


def test_builtin_detector_on_real_photos(astronaut, grace_hopper_path, no_face_image):
    from mirage_desktop.vision.image_io import load_image

    haar = HaarFaceDetector()
    (face,) = haar.detect(astronaut)
    x1, y1, x2, y2 = face.bbox
    assert 150 < (x1 + x2) / 2 < 300 and 60 < (y1 + y2) / 2 < 180  # Eileen Collins' face
    assert face.kps[0, 0] < face.kps[1, 0]  # left eye left of right eye
    gh = haar.detect(load_image(grace_hopper_path))
    assert len(gh) >= 1
    assert haar.detect(no_face_image) == []


def test_six_faces_in_the_group_photo(t1_path):
    from mirage_desktop.vision.image_io import load_image

    faces = HaarFaceDetector().detect(load_image(t1_path))
    assert len(faces) >= 5
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
