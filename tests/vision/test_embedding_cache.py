"""A cached or saved embedding that is the wrong shape or not finite is detected and rebuilt; it never
reaches the swapper (a NaN latent paints a black face)."""

from __future__ import annotations

import io
import logging

import cv2
import numpy as np
import pytest

from mirage_desktop.cli import main
from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.errors import MirageError
from mirage_desktop.vision.analysis import FaceAnalyzer
from mirage_desktop.vision.identity import IdentityBuilder, IdentityStore, SourceIdentity, usable_embedding


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


# every way a cached .npy can be unusable
BAD_CACHES = {
    "wrong shape": _npy(np.ones(256, np.float32)),
    "2-d": _npy(np.ones((1, 512), np.float32)),
    "NaN": _npy(np.full(512, np.nan, np.float32)),
    "infinite": _npy(np.full(512, np.inf, np.float32)),
    "all zeros": _npy(np.zeros(512, np.float32)),
    "strings": _npy(np.array(["a"] * 512)),
    "truncated": _npy(np.ones(512, np.float32))[:100],
    "not npy": b"garbage",
    "empty": b"",
    "huge header": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
                   + b" " * 44 + b"\n",
    "float64 beyond float32": _npy(np.full(512, 1e300)),
    "oversized file": _npy(np.ones(512, np.float32)) + b"\0" * 100_000,
    "pickled object": b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }" + b" " * 60
                      + b"\n" + b"\x80\x04K\x01.",
}


@pytest.fixture
def analyzer(model_factory):
    paths = model_factory(None, faces=[])
    return FaceAnalyzer.load(overrides={"w600k_r50": paths["w600k_r50"]})


@pytest.mark.parametrize("case", list(BAD_CACHES))
def test_a_bad_cached_embedding_is_rebuilt(analyzer, astronaut, tmp_path, case, caplog):
    b = IdentityBuilder(analyzer, cache=tmp_path / "cache")
    good = b.build([astronaut]).embedding
    files = list((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1
    files[0].write_bytes(BAD_CACHES[case])
    with caplog.at_level(logging.WARNING):
        again = b.build([astronaut]).embedding
    assert usable_embedding(again) is None
    np.testing.assert_allclose(again, good, rtol=1e-6)
    assert "computing it again" in caplog.text
    assert usable_embedding(np.load(files[0])) is None  # the cache holds a good one again


def test_an_unwritable_cache_is_only_a_warning(analyzer, astronaut, unwritable_target, caplog):
    path, _words = unwritable_target
    if path.is_dir():  # "a path that is a folder": the cache entry's own name is taken by a folder
        from mirage_desktop.vision.identity import image_hash

        b = IdentityBuilder(analyzer, cache=path)
        b._cache_key(image_hash(astronaut)).mkdir()
    else:
        b = IdentityBuilder(analyzer, cache=path)
    with caplog.at_level(logging.WARNING):
        ident = b.build([astronaut])
    assert usable_embedding(ident.embedding) is None
    assert "cannot write embedding cache" in caplog.text


def test_a_recognizer_giving_nan_is_refused(analyzer, astronaut, tmp_path, monkeypatch):
    monkeypatch.setattr(analyzer.recognizer, "embed", lambda *a: np.full(512, np.nan, np.float32))
    with pytest.raises(MirageError, match="unusable embedding"):
        IdentityBuilder(analyzer, cache=tmp_path / "c").build([astronaut])
    assert not list((tmp_path / "c").glob("*.npy"))  # nothing bad is cached


@pytest.mark.parametrize("case", ["wrong shape", "NaN", "all zeros", "not npy", "empty"])
def test_a_saved_identity_with_a_bad_embedding_is_rebuilt_from_its_photos(analyzer, astronaut, tmp_path, case):
    photo = tmp_path / "eileen.png"
    cv2.imwrite(str(photo), astronaut)
    store = IdentityStore(tmp_path / "ids")
    builder = IdentityBuilder(analyzer, cache=tmp_path / "cache")
    ident = builder.build([str(photo)], "Eileen")
    ident.consent = True
    d = store.save(ident)
    (d / "embedding.npy").write_bytes(BAD_CACHES[case])
    with pytest.raises(MirageError, match="unusable face embedding.*cannot be rebuilt here"):
        store.load("Eileen")  # no builder: a clear error, not a black face
    listed = store.load("Eileen", require_embedding=False)  # the gallery still shows it
    assert listed.embedding is None and listed.problem
    again = store.load("Eileen", builder=builder)
    np.testing.assert_allclose(again.embedding, ident.embedding, rtol=1e-6)
    assert again.consent
    assert usable_embedding(np.load(d / "embedding.npy")) is None  # saved again
    (d / "embedding.npy").write_bytes(BAD_CACHES[case])
    photo.unlink()
    with pytest.raises(MirageError, match="photos are gone"):
        store.load("Eileen", builder=builder)


@pytest.mark.parametrize("bad", [np.full(512, np.nan, np.float32), np.zeros(512, np.float32),
                                 np.ones(128, np.float32)], ids=["nan", "zeros", "short"])
def test_the_engine_refuses_an_identity_that_would_paint_a_black_face(model_factory, astronaut, bad):
    engine = Engine(Settings(), model_overrides=model_factory(astronaut))
    engine.load_models()
    good = engine.set_source_photos([astronaut], "good")
    latent = engine.latent.copy()
    with pytest.raises(MirageError, match="cannot be used"):
        engine.set_identity(SourceIdentity("broken", bad))
    assert engine.identity is good
    np.testing.assert_array_equal(engine.latent, latent)  # the current face stays


def test_mirage_swap_with_a_poisoned_cache_swaps_a_real_face(model_factory, astronaut, tmp_path, capsys):
    """End to end through the CLI: the poisoned cache is rebuilt and the face is not black."""
    import os

    models = model_factory(astronaut)
    src = tmp_path / "me.png"
    cv2.imwrite(str(src), astronaut)
    out = tmp_path / "out.png"
    args = ["swap", "--source", str(src), "--target", str(src), "-o", str(out), "--confirm-rights",
            "--no-ai-mark"] + [x for k, p in models.items() for x in ("--model", f"{k}={p}")]
    assert main(args) == 0
    cache = list((tmp_path.parent.glob("**/embeddings/*.npy")))
    cache = [p for p in cache if str(p).startswith(os.environ["MIRAGE_CACHE_DIR"])]
    assert cache
    for p in cache:
        p.write_bytes(BAD_CACHES["NaN"])
    out.unlink()
    assert main(args) == 0, capsys.readouterr().err
    res = cv2.imread(str(out))
    from mirage_desktop.vision.detector import HaarFaceDetector

    face = HaarFaceDetector().detect(astronaut)[0]
    x1, y1, x2, y2 = face.bbox.astype(int)
    region = res[y1:y2, x1:x2]
    assert region.mean() > 20  # the swapped face has colour: no NaN latent reached the swapper
    assert not np.array_equal(region, astronaut[y1:y2, x1:x2])  # and it was swapped
