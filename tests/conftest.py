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


@pytest.fixture(autouse=True)
def _no_virtual_microphone_unless_asked(request, monkeypatch):
    """The machine's own audio devices decide whether the engine opens a lip-sync microphone (it
    does whenever a virtual microphone exists); tests that are not about it must not depend on
    whether another test left one set up. Tests about it are marked ``virtual_mic``."""
    if request.node.get_closest_marker("virtual_mic") is None:
        monkeypatch.setattr("mirage_desktop.engine.virtual_microphone", lambda settings: None)


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
    from mirage_desktop.testing import face_models as synthetic

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


# ---- places a write can fail: shared by every test of the "files the app writes" class --------------

def _mount_tmpfs(path: Path, options: str) -> bool:
    import subprocess

    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB file system: a recording or a download fills it quickly."""
    d = tmp_path / "small"
    if not _mount_tmpfs(d, "size=3m"):
        pytest.skip("a small file system needs root (mount -t tmpfs)")
    yield d
    _umount(d)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be written in, also for root (a read-only tmpfs; chmod for others)."""
    d = tmp_path / "readonly"
    if _mount_tmpfs(d, "ro,size=64k"):
        yield d
        _umount(d)
        return
    d.mkdir()
    d.chmod(0o555)
    probe = d / ".probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        pytest.skip("cannot make a read-only folder here (root without mount)")
    except OSError:
        pass
    yield d
    d.chmod(0o755)


@pytest.fixture
def full_dir(tmp_path):
    """A folder on a file system that is full: a tiny tmpfs filled to the last block."""
    d = tmp_path / "full"
    if not _mount_tmpfs(d, "size=256k"):
        pytest.skip("a full file system needs root (mount -t tmpfs)")
    filler = d / ".filler"
    try:
        with open(filler, "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass
    yield d
    _umount(d)


@pytest.fixture(params=["readonly", "full", "is_a_folder", "parent_is_a_file"])
def unwritable_target(request, tmp_path):
    """A file path that cannot be written, one fixture value per way it fails: use it for every
    file the app writes. Yields (path, words the user's message must contain)."""
    kind = request.param
    if kind == "readonly":
        d = request.getfixturevalue("readonly_dir")
        yield d / "out.bin", ("read-only" if os.geteuid() == 0 else "permission denied")
    elif kind == "full":
        d = request.getfixturevalue("full_dir")
        yield d / "out.bin", "disk is full"
    elif kind == "is_a_folder":
        d = tmp_path / "a_folder.bin"
        d.mkdir()
        yield d, "folder"
    else:
        f = tmp_path / "plainfile"
        f.write_text("x")
        yield f / "out.bin", "not a folder"
