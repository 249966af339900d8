"""Source identities from real photos: quality checks with reasons, averaging, cache, persistence."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mirage_desktop.errors import InputImageError
from mirage_desktop.vision.analysis import FaceAnalyzer
from mirage_desktop.vision.identity import IdentityBuilder, IdentityStore, check_photo
from mirage_desktop.vision.image_io import load_image


@pytest.fixture
def analyzer(model_factory):
    # Haar as the detector (a real one, on real photos), a synthetic ArcFace for embeddings
    paths = model_factory(None, faces=[])
    return FaceAnalyzer.load(overrides={"w600k_r50": paths["w600k_r50"]})


def _checks(img):
    from mirage_desktop.vision.detector import HaarFaceDetector

    face, checks = check_photo(img, HaarFaceDetector().detect(img))
    return face, {c.name: c for c in checks}


def test_good_photos_pass_every_check(astronaut, grace_hopper_path):
    for img in (astronaut, load_image(grace_hopper_path)):
        face, checks = _checks(img)
        assert face is not None
        assert all(c.passed for c in checks.values()), [c.reason for c in checks.values()]


def test_blurry_photo_fails_with_a_reason(astronaut):
    _, checks = _checks(cv2.GaussianBlur(astronaut, (0, 0), 4))
    assert not checks["sharpness"].passed
    assert "blurry" in checks["sharpness"].reason and "sharper photo" in checks["sharpness"].reason


def test_small_face_fails(astronaut):
    from mirage_desktop.vision.detector import HaarFaceDetector
    from mirage_desktop.vision.face import Face

    (face,) = HaarFaceDetector().detect(astronaut)
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)  # the face is ~47 px now
    _, checks = check_photo(small, [Face(face.bbox / 2, face.kps / 2, face.score)])
    size = {c.name: c for c in checks}["face size"]
    assert not size.passed and "too small" in size.reason and "higher-resolution" in size.reason


def test_turned_head_fails_pose(astronaut):
    from mirage_desktop.vision.face import Face

    from mirage_desktop.vision.detector import HaarFaceDetector

    (face,) = HaarFaceDetector().detect(astronaut)
    turned = Face(face.bbox, face.kps.copy(), face.score)
    eye_d = face.kps[1, 0] - face.kps[0, 0]
    turned.kps[2, 0] += 0.5 * eye_d  # nose far to one side: head turned
    _, checks = check_photo(astronaut, [turned])
    pose = {c.name: c for c in checks}["head pose"]
    assert not pose.passed and "turned or tilted" in pose.reason


def test_several_faces_says_which_one_was_taken(t1_path):
    face, checks = _checks(load_image(t1_path))
    note = checks["single face"]
    assert note.passed and "faces found; using the largest" in note.reason


def test_identity_averages_and_normalises_embeddings(analyzer, astronaut, grace_hopper_path):
    b = IdentityBuilder(analyzer)
    one = b.build([astronaut])
    both = b.build([astronaut, grace_hopper_path], "mix")
    assert np.linalg.norm(both.embedding) == pytest.approx(1.0, abs=1e-5)
    e1, e2 = (r.embedding for r in both.reports)
    mean = (e1 + e2) / 2
    np.testing.assert_allclose(both.embedding, mean / np.linalg.norm(mean), rtol=1e-5)
    np.testing.assert_allclose(one.embedding, e1, rtol=1e-5)
    assert both.thumbnail.shape == (256, 256, 3)


def test_a_failing_photo_is_skipped_when_another_passes(analyzer, astronaut, no_face_image):
    ident = IdentityBuilder(analyzer).build([no_face_image, astronaut], "x")
    assert [r.passed for r in ident.reports] == [False, True]
    assert ident.embedding is not None


def test_no_usable_photo_names_each_reason(analyzer, no_face_image, astronaut):
    with pytest.raises(InputImageError) as e:
        IdentityBuilder(analyzer).build([no_face_image, cv2.GaussianBlur(astronaut, (0, 0), 5)])
    msg = str(e.value)
    assert "no face found" in msg and "blurry" in msg


def test_embeddings_are_cached_by_image_hash(analyzer, astronaut, monkeypatch):
    b = IdentityBuilder(analyzer)
    first = b.build([astronaut]).embedding
    calls = []
    monkeypatch.setattr(analyzer.recognizer, "embed", lambda *a: calls.append(a) or np.full(512, 512 ** -0.5))
    again = b.build([astronaut]).embedding
    assert calls == []  # served from the disk cache
    np.testing.assert_array_equal(first, again)
    b.build([astronaut[:, ::-1].copy()])  # a different image is computed
    assert len(calls) == 1


def test_identities_persist_with_consent(analyzer, astronaut, tmp_path):
    store = IdentityStore(tmp_path / "ids")
    ident = IdentityBuilder(analyzer).build([astronaut], "Eileen")
    ident.consent = True
    store.save(ident)
    again = IdentityStore(tmp_path / "ids").load("Eileen")
    assert again.consent and again.name == "Eileen"
    np.testing.assert_array_equal(again.embedding, ident.embedding)
    assert again.thumbnail.shape == (256, 256, 3)
    assert store.names() == ["Eileen"]
    store.delete("Eileen")
    assert store.names() == []


def test_names_with_the_same_folder_slug_never_overwrite_each_other(analyzer, astronaut, grace_hopper_path, tmp_path):
    store = IdentityStore(tmp_path / "ids")
    b = IdentityBuilder(analyzer)
    ivan, petr = b.build([astronaut], "Иван"), b.build([grace_hopper_path], "Пётр")
    store.save(ivan)
    store.save(petr)
    assert sorted(store.names()) == ["Иван", "Пётр"]
    np.testing.assert_array_equal(store.load("Иван").embedding, ivan.embedding)
    np.testing.assert_array_equal(store.load("Пётр").embedding, petr.embedding)
    store.set_consent("Пётр")
    assert store.load("Пётр").consent and not store.load("Иван").consent
    store.delete("Иван")
    assert store.names() == ["Пётр"]
