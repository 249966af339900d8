"""Shared fixtures: isolated user dirs, real face photos, synthetic models with real signatures."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Never read or write the real user's settings, identities, caches or models."""
    base = tmp_path_factory.mktemp("user")
    for key, sub in (("MIRAGE_CONFIG_DIR", "config"), ("MIRAGE_DATA_DIR", "data"),
                     ("MIRAGE_CACHE_DIR", "cache"), ("MIRAGE_MODELS_DIR", "models")):
        monkeypatch.setenv(key, str(base / sub))
    for key in list(os.environ):
        if key.startswith("MIRAGE_ENABLE_") or key in ("MIRAGE_MAX_FACES", "MIRAGE_CODEFORMER_FIDELITY"):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def grace_hopper_path() -> Path:
    import matplotlib

    p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    assert p.exists(), "matplotlib ships grace_hopper.jpg"
    return p


@pytest.fixture(scope="session")
def t1_path() -> Path:
    """insightface's group photo with six faces (installed with --no-deps by .ci/run)."""
    import importlib.util

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("insightface is not installed (pip install --no-deps insightface)")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"
    assert p.exists()
    return p


@pytest.fixture(scope="session")
def no_face_image() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)


def haar_faces(img: np.ndarray):
    from mirage_desktop.vision.detector import HaarFaceDetector

    return HaarFaceDetector().detect(img)


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """Build det/arcface/inswapper ONNX models whose detector 'sees' the faces of a given image.

    The scripted detector is placed by OpenCV's real Haar detector on the same photo, so
    everything after detection (alignment, embedding, swap, paste-back) works on real face
    positions.
    """
    from mirage_desktop.models import synthetic

    root = tmp_path_factory.mktemp("models")
    counter = iter(range(10_000))

    def build(img: np.ndarray | None = None, faces=None, det_size: int = 640) -> dict:
        if faces is None:
            faces = [(f.bbox, f.kps) for f in haar_faces(img)] if img is not None else []
        shape = img.shape if img is not None else (det_size, det_size, 3)
        scripted = synthetic.scripted_faces_for_image(shape, faces, det_size)
        d = root / f"set{next(counter)}"
        paths = synthetic.build_model_set(d, scripted, det_size)
        return {"det_10g": paths["det_10g"], "w600k_r50": paths["w600k_r50"],
                "inswapper_128_fp16": paths["inswapper_128"], "inswapper_128": paths["inswapper_128"]}

    return build
