"""`--map REF_PHOTO=SOURCE` on `mirage swap` and `mirage run`: each mapped person gets their
source face, the others stay themselves; a bad pair is one line naming the fix, exit code 2.

The faces are real faces printed for the marker detector (``tests_support.marker_face``), so
they are found wherever they are and the synthetic ArcFace tells the people apart."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from tests_support import marker_face

from mirage_desktop.cli import main
from mirage_desktop.testing import face_models as synthetic

S = 130


def _photo(faces: dict) -> np.ndarray:
    img = np.full((400, 640, 3), 20, np.uint8)
    for (x, y), patch in faces.items():
        img[y:y + S, x:x + S] = patch
    return img


@pytest.fixture(scope="module")
def scene(tmp_path_factory, astronaut, grace_hopper_path):
    d = tmp_path_factory.mktemp("map")
    grace = cv2.imread(str(grace_hopper_path))
    a = marker_face(astronaut, (160, 50, 285, 175), 2, S)
    b = marker_face(grace, (130, 80, 400, 350), 1, S)
    x = marker_face(grace[:, ::-1], (112, 80, 382, 350), 2, S)
    files = {}
    for name, img in (("a", _photo({(200, 120): a})), ("b", _photo({(200, 120): b})),
                      ("x", _photo({(200, 120): x})), ("both", _photo({(60, 60): a, (400, 150): b})),
                      ("empty", _photo({}))):
        files[name] = d / f"{name}.png"
        cv2.imwrite(str(files[name]), img)
    paths = synthetic.build_model_set(d / "models", [], 640)
    paths["det_10g"] = synthetic.build_marker_scrfd(d / "det_marker.onnx")
    files["paths"] = {n: paths[n] for n in ("det_10g", "w600k_r50", "inswapper_128")}
    files["models"] = _models(files["paths"])
    return files


def _models(paths: dict, skip: tuple = ()) -> list[str]:
    return [a for n, p in paths.items() if n not in skip for a in ("--model", f"{n}={p}")]


def _swap(scene, tmp_path, *args):
    out = tmp_path / "out.png"
    rc = main(["swap", "--target", str(scene["both"]), "-o", str(out), "--no-ai-mark", *scene["models"], *args])
    return rc, out


def _changed(out, scene) -> tuple[bool, bool]:
    """(the astronaut's face changed, Grace Hopper's face changed)."""
    got, before = cv2.imread(str(out)).astype(int), cv2.imread(str(scene["both"])).astype(int)
    diff = np.abs(got - before).max(axis=2) > 0
    return bool(diff[60:60 + S, 60:60 + S].any()), bool(diff[150:150 + S, 400:400 + S].any())


def test_swap_gives_the_mapped_person_the_source_face_and_leaves_the_other(scene, tmp_path, capsys):
    # Grace Hopper (b) is the second face; without a map, max_faces 1 would swap the first
    rc, out = _swap(scene, tmp_path, "--map", f"{scene['b']}={scene['x']}", "--confirm-rights")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "swapped 1 of 2 face(s)" in err
    assert _changed(out, scene) == (False, True)
    rc, out = _swap(scene, tmp_path, "--map", f"{scene['a']}={scene['x']}", "--map", f"{scene['b']}={scene['x']}",
                    "--confirm-rights")
    assert rc == 0 and _changed(out, scene) == (True, True) and "swapped 2 of 2" in capsys.readouterr().err


def test_a_saved_identity_is_a_source_and_its_consent_stands(scene, tmp_path, capsys):
    from mirage_desktop.config import Settings
    from mirage_desktop.engine import Engine
    from mirage_desktop.vision.identity import IdentityStore

    eng = Engine(Settings(), model_overrides=scene["paths"])
    ident = eng.build_identity([scene["x"]], "Grace mirrored")
    ident.consent = True
    IdentityStore().save(ident)
    rc, out = _swap(scene, tmp_path, "--map", f"{scene['a']}=Grace mirrored")  # consent given when saved
    assert rc == 0, capsys.readouterr().err
    assert _changed(out, scene) == (True, False)


@pytest.mark.parametrize("pair, words", [
    ("{a}", "is not REF_PHOTO=SOURCE"),
    ("={x}", "is not REF_PHOTO=SOURCE"),
    ("{missing}={x}", "does not exist — check the reference photo's path"),
    ("{empty}={x}", "no usable face in"),
    ("{a}={empty}", "no usable face in"),
    ("{a}=Nobody saved", "neither a photo nor a saved identity"),
])
def test_a_bad_pair_is_one_line_naming_the_fix(scene, tmp_path, capsys, pair, words):
    files = {k: v for k, v in scene.items() if k not in ("models", "paths")}
    pair = pair.format(missing=tmp_path / "nope.png", **files)
    rc, out = _swap(scene, tmp_path, "--map", pair, "--confirm-rights")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert len(err) == 1 and err[0].startswith("mirage: error: ") and words in err[0], err


def test_a_map_without_the_recognition_model_says_how_to_get_it(scene, tmp_path, capsys):
    out = tmp_path / "out.png"
    rc = main(["swap", "--target", str(scene["both"]), "-o", str(out), *_models(scene["paths"], ("w600k_r50",)),
               "--map", f"{scene['a']}={scene['x']}", "--confirm-rights"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["mirage: error: --map needs face embeddings (ArcFace) — run `mirage models download "
                               "buffalo_l`"]


def test_each_mapped_source_photo_needs_the_rights_confirmed(scene, tmp_path, capsys):
    rc, out = _swap(scene, tmp_path, "--map", f"{scene['a']}={scene['x']}")  # stdin is not a terminal here
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err[-1] == f"mirage: error: you must confirm you have the right to use the face in {scene['x']} — " \
                      "add --confirm-rights"


def test_run_takes_the_map_too(scene, tmp_path, capsys):
    rc = main(["run", "--input", str(scene["both"]), "--output", "null", "--frames", "5", *scene["models"],
               "--map", f"{scene['b']}={scene['x']}", "--confirm-rights"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"map {scene['b']} -> x" in err and "pass-through" not in err
    swapped = int(err.split("swapped faces ")[1].split()[0])
    assert 1 <= swapped <= 5  # Grace Hopper, once found; never the astronaut (not mapped)
    rc = main(["run", "--input", str(scene["both"]), "--output", "null", "--frames", "1", *scene["models"],
               "--map", "no-equals-sign"])
    assert rc == 2 and "is not REF_PHOTO=SOURCE" in capsys.readouterr().err


def test_a_map_is_refused_with_a_remote_engine(scene, capsys):
    rc = main(["run", "--remote", "https://gpu-host:8443", "--output", "null", "--map", f"{scene['a']}={scene['x']}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--map works with this computer's engine, not with --remote" in err[0]
