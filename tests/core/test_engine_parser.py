"""The occlusion-aware mask inside the engine: its own stage, live switch, stills, pass-through.

Tests wait for the frames or counters they need; timeouts are hang guards only."""

from __future__ import annotations

import threading

import numpy as np
from tests_support import Frames, Gate, now, wait_counter

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.outputs.sinks import NullSink
from mirage_desktop.testing import face_models as synthetic
from mirage_desktop.vision.capture import ImageSource
from mirage_desktop.vision.detector import HaarFaceDetector


def _occluded(astronaut):
    (face,) = HaarFaceDetector().detect(astronaut)
    img = astronaut.copy()
    eye = float(np.linalg.norm(face.kps[1] - face.kps[0]))
    y = int(round((face.kps[3, 1] + face.kps[4, 1]) / 2))
    h = int(round(0.18 * eye))
    x0, x1 = int(face.kps[3, 0] - 0.5 * eye), int(face.kps[4, 0] + 0.5 * eye)
    img[y - h:y + h, x0:x1] = (0, 255, 0)
    return img, (slice(y - h + 2, y + h - 2), slice(x0 + 2, x1 - 2))


def _engine(model_factory, img, tmp_path, **settings):
    paths = dict(model_factory(img))
    paths["bisenet_resnet_18"] = synthetic.build_parser(tmp_path / "bisenet_resnet_18.onnx")
    eng = Engine(Settings(enable_ai_mark=False, **settings), model_overrides=paths)
    eng.load_models()
    eng.set_source_photos([img], "self")
    return eng


def test_the_live_parser_is_its_own_stage_and_keeps_the_occluder(model_factory, astronaut, tmp_path):
    img, bar = _occluded(astronaut)
    eng = _engine(model_factory, img, tmp_path, enable_parser=True, parser_interval=2, parser_async=True)
    assert eng.parse_stage is not None
    frames = Frames(eng)
    eng.start(ImageSource(img, fps=30), [NullSink()])
    try:
        wait_counter(eng.metrics, "parse.runs", 2)
        got = frames.after(now(), 1, where=lambda p: p.swapped)  # a frame made with a parsed mask
    finally:
        frames.close()
        eng.stop()
    assert not any(t.name == "mirage-parser" for t in threading.enumerate())  # stopped with the stream
    np.testing.assert_array_equal(got.frame[bar], img[bar])  # the bar in front of the mouth stays
    assert np.any(got.frame != img, axis=2).sum() > 500  # the rest of the face is swapped
    snap = eng.snapshot()
    assert snap["stages"]["parse"]["count"] > 0 and snap["stages"]["parse.model"]["count"] >= 2


def test_switching_the_parser_on_while_running_loads_it(model_factory, astronaut, tmp_path):
    img, bar = _occluded(astronaut)
    eng = _engine(model_factory, img, tmp_path)
    assert eng.parse_stage is None  # off by default: not loaded
    frames = Frames(eng)
    eng.start(ImageSource(img, fps=30), [NullSink()])
    try:
        plain = frames.after(now(), 1, where=lambda p: p.swapped)
        eng.set_option("enable_parser", True)
        assert eng.parse_stage is not None
        wait_counter(eng.metrics, "parse.runs", 1)
        parsed = frames.after(now(), 1, where=lambda p: p.swapped)
    finally:
        frames.close()
        eng.stop()
    assert np.any(plain.frame[bar] != img[bar], axis=2).mean() > 0.5  # painted over without it
    np.testing.assert_array_equal(parsed.frame[bar], img[bar])


def test_a_still_is_parsed_inline(model_factory, astronaut, tmp_path):
    img, bar = _occluded(astronaut)
    eng = _engine(model_factory, img, tmp_path, enable_parser=True)
    out = img.copy()
    res = eng.process_still(out)
    assert res.swapped == 1
    np.testing.assert_array_equal(out[bar], img[bar])


def test_a_missing_parser_model_is_a_warning_and_the_swap_goes_on(model_factory, astronaut):
    eng = Engine(Settings(enable_parser=True, enable_ai_mark=False), model_overrides=model_factory(astronaut))
    st = eng.load_models()
    assert eng.parse_stage is None
    assert any(p.startswith("parser:") and "occlusion-aware mask off" in p and "bisenet_resnet_18" in p
               for p in st.problems)
    eng.set_source_photos([astronaut], "self")
    assert eng.process_still(astronaut.copy()).swapped == 1


def test_a_new_stream_never_reuses_the_last_streams_masks(model_factory, astronaut, tmp_path):
    """Track ids start at 1 again in every stream: the parser's labels of the old track 1 (maybe a
    hand that was there) must not be pasted on the new stream's track 1."""
    img, _ = _occluded(astronaut)
    eng = _engine(model_factory, img, tmp_path, enable_parser=True, parser_interval=1, parser_async=True)
    stage = eng.parse_stage
    eng.start(ImageSource(img, fps=30), [NullSink()])
    try:
        wait_counter(eng.metrics, "parse.runs", 1)
    finally:
        eng.stop()
    assert stage._tracks  # the first stream's labels are still held
    gate = Gate()
    real = stage.parser.labels
    stage.parser.labels = lambda crop: (gate.enter(), real(crop))[1]
    eng.start(ImageSource(img, fps=30), [NullSink()])
    try:
        gate.wait_reached()  # the new stream asked for its own labels; none have arrived
        assert not stage._tracks
    finally:
        gate.open()
        eng.stop()
        stage.parser.labels = real


def test_server_sessions_get_the_parser_of_the_shared_models(model_factory, astronaut, tmp_path):
    img, bar = _occluded(astronaut)
    shared = _engine(model_factory, img, tmp_path, enable_parser=True)
    session = Engine(Settings(enable_parser=True, enable_ai_mark=False))
    session.use_shared_models(shared)
    assert session.parse_stage is not None and session.parse_stage is not shared.parse_stage
    assert session.parse_stage.parser is shared.parse_stage.parser  # one model, the labels per session
    session.set_source_photos([img], "self")
    out = img.copy()
    assert session.process_still(out).swapped == 1
    np.testing.assert_array_equal(out[bar], img[bar])


def test_a_parser_file_of_another_signature_is_a_warning_and_the_swap_goes_on(model_factory, astronaut, tmp_path):
    """``--model bisenet_resnet_18=wrong.onnx``: refused at load with the shapes, the stream swaps with the oval."""
    wrong = synthetic.build_gfpgan(tmp_path / "not_a_parser.onnx")  # 1x3x512x512 -> 1x3x512x512
    paths = dict(model_factory(astronaut), bisenet_resnet_18=wrong)
    eng = Engine(Settings(enable_parser=True, enable_ai_mark=False), model_overrides=paths)
    st = eng.load_models()
    assert eng.parse_stage is None
    (line,) = [p for p in st.problems if p.startswith("parser:")]
    assert "occlusion-aware mask off" in line and "is not a face parser" in line and "1x19" in line
    eng.set_source_photos([astronaut], "self")
    assert eng.process_still(astronaut.copy()).swapped == 1
