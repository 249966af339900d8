"""Face mapping: a different identity per person (vision/mapping.py and its use by the pipeline,
the still path and the engine).

The clip test runs the real pipeline on two real faces (the astronaut and Grace Hopper) that
cross: each face is printed in one colour channel bright enough for the marker detector
(``build_marker_scrfd``: its boxes follow the image), its texture in the other channels, so the
synthetic ArcFace sees two different people (checked in the set-up). The synthetic swapper
adds a per-channel offset that depends on the latent, so how a face's pixels moved tells which
identity it was given: each person's shift on every frame is compared with the shifts a still
swap of that person gives with each identity, and with no swap at all."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from tests_support import HANG_GUARD_S, CallbackSink, Frames, marker_face, now

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.errors import MirageError
from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.vision.face import Face
from mirage_desktop.vision.mapping import HYSTERESIS, FaceMap, MapEntry


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def _entries(n: int, seed: int = 0) -> list[MapEntry]:
    rng = np.random.default_rng(seed)
    return [MapEntry(_unit(rng.standard_normal(512)), _unit(rng.standard_normal(512))[None], f"id{k}")
            for k in range(n)]


def _face(emb, track_id=-1) -> Face:
    return Face(np.array([0, 0, 10, 10], float), np.zeros((5, 2)), 0.9, emb, track_id)


def _toward(ref: np.ndarray, other: np.ndarray, sim: float) -> np.ndarray:
    """A unit vector whose cosine with ``ref`` is ``sim`` (the rest orthogonal to it, towards ``other``)."""
    o = other - (other @ ref) * ref
    o = o / np.linalg.norm(o)
    return _unit(sim * ref + np.sqrt(1 - sim * sim) * o)


# ---- FaceMap.assign -------------------------------------------------------------------------

def test_each_entry_goes_to_one_face_the_most_alike_first():
    a, b = _entries(2)
    fm = FaceMap([a, b])
    # both faces look most like a: a goes to the more alike one, b to the other (still above threshold)
    f1 = _face(_toward(a.reference, b.reference, 0.9))
    f2 = _face(_unit(0.7 * a.reference + 0.6 * b.reference))
    assert f2.embedding @ b.reference >= 0.5 and f2.embedding @ a.reference < 0.9
    got = fm.assign_entries([f2, f1], 0.4)
    assert got[1] is a and got[0] is b
    lat = fm.assign([f2, f1], 0.4)
    assert lat[1] is a.latent and lat[0] is b.latent


def test_below_the_threshold_and_without_an_embedding_a_face_stays_unmapped():
    a, b = _entries(2)
    fm = FaceMap([a, b])
    stranger = _face(_unit(np.random.default_rng(5).standard_normal(512)))
    near = _face(_toward(a.reference, stranger.embedding, 0.5))  # like a at 0.5, like b hardly at all
    assert abs(float(near.embedding @ b.reference)) < 0.2 and abs(float(stranger.embedding @ b.reference)) < 0.2
    blank = _face(None)
    got = fm.assign([near, stranger, blank], 0.45)
    assert got[0] is a.latent and got[1] is None and got[2] is None
    assert fm.assign([near], 0.55) == [None]  # 0.5 < 0.55
    assert FaceMap([]).assign([near], 0.1) == [None]


def test_a_track_keeps_its_identity_on_noisy_embeddings():
    a, b = _entries(2, seed=3)
    fm = FaceMap([a, b])
    mid = _unit(a.reference + b.reference)  # halfway between the two people
    start = _face(_toward(a.reference, mid, 0.8), track_id=7)
    assert fm.assign_entries([start], 0.35) == [a]
    rng = np.random.default_rng(1)
    leads = []
    for _ in range(50):  # noise that often puts b ahead of a, by less than the margin: the track stays a
        d = rng.uniform(-0.025, 0.025)
        emb = _unit(mid + d * (b.reference - a.reference) + 0.005 * rng.standard_normal(512))
        leads.append(float(emb @ b.reference - emb @ a.reference))
        if leads[-1] > 0.01:
            b_ahead = emb
        assert leads[-1] < HYSTERESIS
        assert fm.assign_entries([_face(emb, 7)], 0.35) == [a]
    assert sum(lead > 0.01 for lead in leads) >= 10  # b really was ahead, often
    # a clear lead (more than the margin) does move it, and it sticks there
    clear = _toward(b.reference, a.reference, 0.9)
    assert fm.assign_entries([_face(clear, 7)], 0.35) == [b]
    assert fm.assign_entries([_face(mid, 7)], 0.35) == [b]
    # with no memory (an untracked face, another track) the numbers alone decide: b, a little ahead
    assert fm.assign_entries([_face(b_ahead)], 0.35) == [b]
    assert fm.assign_entries([_face(b_ahead, 8)], 0.35) == [b]


def test_a_track_without_an_embedding_keeps_its_last_entry_and_gone_tracks_are_forgotten():
    a, b = _entries(2)
    fm = FaceMap([a, b])
    assert fm.assign_entries([_face(a.reference, 1), _face(b.reference, 2)], 0.5) == [a, b]
    assert fm.assign_entries([_face(None, 1), _face(None, 2), _face(None, 3)], 0.5) == [a, b, None]
    fm.assign_entries([_face(None, 2)], 0.5)  # track 1 is gone
    assert fm.assign_entries([_face(None, 1), _face(None, 2)], 0.5) == [None, b]
    # the memory does not travel to a fresh copy (another stream, a still)
    assert fm.fresh().assign_entries([_face(None, 2)], 0.5) == [None]



# ---- the clip: two people, two identities, crossing ---------------------------------------------

S = 130  # the faces' side (px)
W, H = 640, 400
N_FRAMES = 36
YA, YB = 60, 150  # A above, B below: they overlap a little as they pass


def _sprite(img: np.ndarray, box: tuple, ch: int) -> np.ndarray:
    return marker_face(img, box, ch, S)


def _positions(i: int) -> tuple[int, int]:
    """x of A (moving right) and of B (moving left) on frame ``i``: they cross mid-clip."""
    xa = int(round(30 + (W - S - 60) * i / (N_FRAMES - 1)))
    return xa, W - S - xa


def _frame(sprites: dict, places: dict) -> np.ndarray:
    f = np.full((H, W, 3), 20, np.uint8)
    for name in ("A", "B"):  # B is drawn over A where they overlap
        if name in places:
            x, y = places[name]
            f[y:y + S, x:x + S] = sprites[name]
    return f


class ClipSource:
    """The clip, once, as a file would give it."""

    kind = "file"
    name = "crossing"
    fps = 30.0
    size = (W, H)

    def __init__(self, frames: list):
        self.frames, self.n = frames, 0

    def read(self):
        if self.n >= len(self.frames):
            return None
        self.n += 1
        return self.frames[self.n - 1].copy()

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def people(astronaut, grace_hopper_path):
    grace = cv2.imread(str(grace_hopper_path))
    return {
        "A": _sprite(astronaut, (160, 50, 285, 175), 2),  # the astronaut, red
        "B": _sprite(grace, (130, 80, 400, 350), 1),  # Grace Hopper, green
        # the identities they become: the other person, in the other colour, mirrored
        "X": _sprite(grace[:, ::-1], (112, 80, 382, 350), 2),
        "Y": _sprite(astronaut[:, ::-1], (227, 50, 352, 175), 1),
    }


@pytest.fixture
def mapping_engine(people, tmp_path):
    paths = synthetic.build_model_set(tmp_path / "models", [], 640)
    paths["det_10g"] = synthetic.build_marker_scrfd(tmp_path / "det_marker.onnx")
    eng = Engine(Settings(enable_ai_mark=False, max_faces=1, match_threshold=0.5, detect_interval=3),
                 model_overrides=paths)
    eng.load_models()

    def photo(name):
        return _frame({"A": people[name]}, {"A": (200, 120)})

    eng.ids = {n: eng.build_identity([photo(n)], n) for n in "ABXY"}
    yield eng
    eng.stop()


def _inner(x: int, y: int, other: tuple | None) -> np.ndarray:
    """The face's central pixels (well inside the swap's mask), minus the other face's square
    (and a margin: its paste-back) where they overlap."""
    m = np.zeros((H, W), bool)
    m[y + int(0.3 * S):y + int(0.7 * S), x + int(0.3 * S):x + int(0.7 * S)] = True
    if other is not None:
        ox, oy = other
        m[max(0, oy - 15):oy + S + 15, max(0, ox - 15):ox + S + 15] = False
    return m


def _shift(out: np.ndarray, orig: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (out[mask].astype(np.float64) - orig[mask]).mean(axis=0)


def test_two_people_mapped_to_two_identities_each_get_theirs_across_a_clip_where_they_cross(
        mapping_engine, people):
    eng, ids = mapping_engine, mapping_engine.ids
    e = {n: ids[n].embedding for n in "AB"}
    # the set-up holds: two different people to the recognizer, each far below the threshold of the other
    assert float(e["A"] @ e["B"]) < 0.3 < 0.5 <= eng.settings.match_threshold
    # what a still swap of each person with each identity does to their pixels (and none: zero)
    calib = {}
    for who in "AB":
        place = {"A": (60, YA), "B": (60, YB)}[who]
        still = _frame(people, {who: place})
        for ident in "XY":
            eng.set_face_map([(e[who], ids[ident])])
            img = still.copy()
            res = eng.process_still(img)
            assert res.swapped == 1
            calib[who, ident] = _shift(img, still, _inner(*place, None))
    for who in "AB":
        gap = np.linalg.norm(calib[who, "X"] - calib[who, "Y"])
        assert gap > 15 and min(np.linalg.norm(calib[who, "X"]), np.linalg.norm(calib[who, "Y"])) > 15, calib

    frames, places = [], []
    for i in range(N_FRAMES):
        xa, xb = _positions(i)
        places.append({"A": (xa, YA), "B": (xb, YB)})
        frames.append(_frame(people, places[-1]))
    assert places[0]["A"][0] < places[0]["B"][0] and places[-1]["A"][0] > places[-1]["B"][0]  # they cross

    eng.set_face_map([(e["A"], ids["X"]), (e["B"], ids["Y"])])
    got = Frames(eng, want_original=True)
    eng.start(ClipSource(frames), [CallbackSink(lambda f: None)], lossless=True)
    assert eng.wait(HANG_GUARD_S)
    eng.stop()
    out = got.since(got.created)
    assert [int(np.abs(p.original.astype(int) - frames[i]).max()) for i, p in enumerate(out)] == [0] * N_FRAMES

    want = {"A": "X", "B": "Y"}
    for i, p in enumerate(out):
        pl = places[i]
        assert p.swapped == 2, i
        for who, other in (("A", "B"), ("B", "A")):
            mask = _inner(*pl[who], pl[other])
            assert mask.sum() > 500
            s = _shift(p.frame, p.original, mask)
            d = {k: float(np.linalg.norm(s - calib[who, k])) for k in "XY"}
            d["none"] = float(np.linalg.norm(s))
            assert min(d, key=d.get) == want[who], (i, who, d)
        labels = sorted(label for _, label in p.mapped)
        assert labels == ["X", "Y"]


def test_a_still_swaps_only_the_mapped_people_each_with_its_own(mapping_engine, people):
    eng, ids = mapping_engine, mapping_engine.ids
    place = {"A": (60, YA), "B": (400, YB)}
    still = _frame(people, place)
    eng.set_face_map([(ids["B"].embedding, ids["X"])])  # only B is mapped; max_faces 1 would pick A (first)
    img = still.copy()
    res = eng.process_still(img)
    assert res.found == 2 and res.swapped == 1 and len(res.chosen) == 1
    assert np.array_equal(img[_inner(*place["A"], None)], still[_inner(*place["A"], None)])  # A stays A
    assert np.abs(_shift(img, still, _inner(*place["B"], None))).max() > 5
    eng.clear_face_map()
    img = still.copy()
    assert eng.process_still(img).swapped == 0  # no source identity, no map: nothing to give anyone
    assert eng.status().passthrough and "no source face" in eng.status().passthrough[0]


def test_a_bad_map_entry_is_refused_and_the_map_in_use_stays(mapping_engine):
    eng, ids = mapping_engine, mapping_engine.ids
    eng.set_face_map([(ids["A"].embedding, ids["X"])])
    with pytest.raises(MirageError, match="cannot be used"):
        eng.set_face_map([(np.full(512, np.nan, np.float32), ids["Y"])])
    with pytest.raises(MirageError, match="cannot be used"):
        eng.set_face_map([(ids["B"].embedding, type("Ident", (), {"name": "Y", "embedding": None})())])
    assert [label for *_, label in eng.face_sources] == ["X"] and eng.face_map.labels == ["X"]
    assert eng.status().passthrough == []  # a map and no single identity: the swap has a face to give


def test_a_face_picked_in_the_live_picture_is_mapped_to_the_chosen_identity(mapping_engine, people):
    eng, ids = mapping_engine, mapping_engine.ids
    from mirage_desktop.outputs.sinks import NullSink
    from mirage_desktop.vision.capture import ImageSource

    place = {"A": (60, YA), "B": (400, YB)}
    eng.set_identity(ids["Y"])
    tracked = threading.Event()
    got = Frames(eng)
    eng.subscribe_frames(lambda p: tracked.set() if len(eng.faces_in_view()) == 2 else None)
    eng.start(ImageSource(_frame(people, place), fps=30), [NullSink()])
    try:
        assert tracked.wait(HANG_GUARD_S)
        with pytest.raises(MirageError, match="no face under the click"):
            eng.pick_face(0.99, 0.99)
        u, v = (place["B"][0] + S / 2) / W, (place["B"][1] + S / 2) / H
        view = eng.pick_face(u, v)  # B, under the click, becomes Y (the identity in use)
        assert view.contains(u, v)
        assert len(eng.face_sources) == 1 and float(eng.face_sources[0][0] @ ids["B"].embedding) > 0.9
        mark = got.count
        pkt = got.outputs(mark, 3)[-1]
        assert [label for _, label in pkt.mapped] == ["Y"] and pkt.swapped == 1
        (box, _), = pkt.mapped
        assert box[0] * W == pytest.approx(place["B"][0], abs=4)  # the tag is on B
        assert {f.label for f in eng.faces_in_view()} == {"Y", ""}
        eng.set_identity(ids["X"])
        eng.pick_face(u, v)  # picked again with another identity: mapped anew, not twice
        assert [label for *_, label in eng.face_sources] == ["X"]
        eng.set_option("enable_swap", False)  # no face tracking: nothing shown to pick from
        got.after(now(), 2)
        assert eng.faces_in_view() == []
        with pytest.raises(MirageError, match="no face under the click"):
            eng.pick_face(u, v)
    finally:
        eng.stop()
    with pytest.raises(MirageError, match="not running"):
        eng.pick_face(u, v)


def test_the_swap_stage_gives_each_mapped_face_its_own_latent_batched_or_not(tmp_path):
    """With a face map the swap stage's latent is a callable: each face is swapped with the latent
    the map put on it, in one batched call or one by one, exactly as if swapped alone with it."""
    from mirage_desktop.commands.bench import six_face_frame
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.models.runtime import create_session
    from mirage_desktop.vision.mapping import LATENT, face_latents
    from mirage_desktop.vision.stages import FrameContext, SwapStage
    from mirage_desktop.vision.swapper import InSwapper

    class Opts:
        enable_mouth_mask = False
        enable_color_transfer = False

    frame, boxes, _ = six_face_frame(1280, 720)
    faces = [Face(b, k, 0.9) for b, k in boxes[:3]]
    one = InSwapper(create_session(synthetic.build_inswapper(tmp_path / "one.onnx"), "cpu"))
    many = InSwapper(create_session(synthetic.build_inswapper(tmp_path / "many.onnx", batch="N"), "cpu"))
    rng = np.random.default_rng(4)
    lats = [one.latent(rng.standard_normal(512).astype(np.float32)) for _ in faces]
    for f, lat in zip(faces, lats):
        f.extra[LATENT] = lat
    alone = frame.copy()
    for f, lat in zip(faces, lats):  # each face swapped on its own with its latent
        one.swap(alone, f, lat)
    for sw in (one, many):
        ctx = FrameContext(frame.copy(), opts=Opts(), faces=faces)
        SwapStage(lambda sw=sw: sw, lambda: face_latents, None, Metrics()).process(ctx)
        assert ctx.swapped == 3
        assert np.abs(ctx.frame.astype(int) - alone).max() <= 1, sw.batchable
    # one latent for all (no map) would have painted other faces: the check above can fail
    same = frame.copy()
    ctx = FrameContext(same, opts=Opts(), faces=faces)
    SwapStage(lambda: one, lambda: lats[0], None, Metrics()).process(ctx)
    assert np.abs(same.astype(int) - alone).max() > 10
