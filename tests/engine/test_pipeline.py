"""The live pipeline end to end: still image as camera → swap → virtual camera / file / callback."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import pytest
import pyvirtualcam


from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.outputs.sinks import CallbackSink, FileSink, NullSink, VirtualCameraSink
from mirage_desktop.vision.capture import ImageSource
from mirage_desktop.vision.slot import LatestSlot


class RecordingBackend:
    """A pyvirtualcam backend registered by the test: records what a call app would receive."""

    frames: list = []
    opened: list = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        RecordingBackend.opened.append((width, height, fps, fourcc))
        self.w, self.h = width, height

    def send(self, frame):
        RecordingBackend.frames.append(frame.copy())

    def close(self):
        pass

    def device(self):
        return "test-cam"

    def native_fourcc(self):
        return None


@pytest.fixture
def engine(model_factory, astronaut):
    paths = model_factory(astronaut)
    eng = Engine(Settings(), model_overrides=paths)
    eng.load_models()
    eng.set_source_photos([astronaut[:, ::-1].copy()], "mirror")
    yield eng
    eng.stop()


def _collect(engine, source, n, **kw):
    got = []
    done = threading.Event()

    def keep(pkt):
        got.append(pkt)
        if len(got) >= n:
            done.set()

    tok = engine.subscribe_frames(keep, want_original=True)  # before start: every frame has its original
    engine.start(source, [CallbackSink(lambda f: None)], **kw)
    assert done.wait(30), f"only {len(got)} frames arrived"
    engine.unsubscribe_frames(tok)
    engine.stop()
    return got


def test_virtual_camera_backend_receives_swapped_frames(engine, astronaut):
    pyvirtualcam.register_backend("mirage-test", RecordingBackend)
    RecordingBackend.frames.clear()
    RecordingBackend.opened.clear()
    sink = VirtualCameraSink(backend="mirage-test", width=640, height=360, fps=30)
    engine.start(ImageSource(astronaut, fps=60, frames=20), [sink])
    assert engine.wait(30)
    engine.stop()
    from pyvirtualcam.util import encode_fourcc

    assert RecordingBackend.opened == [(640, 360, 30.0, encode_fourcc(pyvirtualcam.PixelFormat.BGR.value))]
    assert len(RecordingBackend.frames) >= 10
    f = RecordingBackend.frames[-1]
    assert f.dtype == np.uint8 and f.size == 640 * 360 * 3  # BGR, as requested
    img = f.reshape(360, 640, 3)
    ref = cv2.resize(astronaut, (640, 360), interpolation=cv2.INTER_AREA)
    assert np.abs(img.astype(int) - ref).mean() > 0.5  # something was swapped
    assert engine.metrics.counter("faces.swapped") > 0


def test_missing_virtual_camera_says_how_to_install_it():
    from mirage_desktop.errors import DeviceError

    sink = VirtualCameraSink(backend="v4l2loopback")
    with pytest.raises(DeviceError) as e:
        sink.open(640, 480, 30)
    assert "v4l2loopback" in str(e.value) and "\n" not in str(e.value)


def test_file_sink_writes_a_playable_video(engine, astronaut, tmp_path):
    out = tmp_path / "out.mp4"
    engine.start(ImageSource(astronaut, fps=20, frames=15), [FileSink(out)])
    assert engine.wait(30)
    engine.stop()
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == engine.metrics.counter("frames.out") >= 5  # every frame sent is in the file
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (512, 512)


def test_swap_toggles_live_and_identity_switches_within_frames(engine, astronaut):
    got = _collect(engine, ImageSource(astronaut, fps=60), 12)
    last = got[-1]
    assert last.swapped == 1 and np.any(last.frame != last.original)

    engine.set_option("enable_ai_mark", False)
    engine.set_option("enable_swap", False)
    got = _collect(engine, ImageSource(astronaut, fps=60), 5)
    assert all(np.array_equal(p.frame, p.original) for p in got)  # pure pass-through
    assert "face swap is switched off" in engine.status().passthrough[0]


def test_identity_switch_while_running(engine, astronaut, grace_hopper_path):
    seen = []
    engine.start(ImageSource(astronaut, fps=60), [NullSink()])
    engine.subscribe_frames(lambda p: seen.append(p.frame[95:135, 205:245].copy()))
    time.sleep(0.6)
    before = seen[-1]
    engine.set_source_photos([grace_hopper_path], "grace")
    n0 = len(seen)
    deadline = time.time() + 5
    while len(seen) < n0 + 3 and time.time() < deadline:
        time.sleep(0.02)
    engine.stop()
    assert np.abs(seen[n0 + 2].astype(int) - before).mean() > 1.0  # a different face within 2 frames


def test_a_failing_model_sends_the_frame_unswapped_and_logs_once(engine, astronaut, caplog):
    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory")

    engine.swapper.swap_crop = boom
    engine.set_option("enable_ai_mark", False)
    with caplog.at_level(logging.WARNING):
        got = _collect(engine, ImageSource(astronaut, fps=60), 10)
    assert all(np.array_equal(p.frame, p.original) for p in got)
    assert engine.metrics.counter("errors.swap") >= 5
    assert caplog.text.count("CUDA out of memory") == 1
    assert engine.metrics.counter("frames.out") >= 10


def test_env_flags_set_stages_at_start(monkeypatch):
    from mirage_desktop.config import load

    monkeypatch.setenv("MIRAGE_ENABLE_SWAP", "0")
    monkeypatch.setenv("MIRAGE_ENABLE_ENHANCER", "1")
    monkeypatch.setenv("MIRAGE_MAX_FACES", "3")
    s = load().settings
    assert (s.enable_swap, s.enable_enhancer, s.max_faces) == (False, True, 3)


def test_missing_models_mean_pass_through_with_reasons(astronaut):
    eng = Engine(Settings())
    st = eng.load_models()
    assert st.detector == "opencv-haar"
    text = " ".join(st.passthrough)
    assert "mirage models download" in text
    eng.set_option("enable_ai_mark", False)
    got = _collect(eng, ImageSource(astronaut, fps=60), 5)
    assert all(np.array_equal(p.frame, p.original) for p in got)
    assert eng.snapshot()["health"]["level"] == "red"


def test_drop_oldest_slot_counts_and_never_blocks():
    drops = []
    s = LatestSlot(on_drop=drops.append)
    for i in range(5):
        s.put(i)
    assert s.get(0) == 4 and drops == [0, 1, 2, 3]
    assert s.get(0.01) is None


def test_slow_worker_drops_frames_instead_of_queueing(engine, astronaut):
    real = engine.swapper.swap_crop

    def slow(*a, **k):
        time.sleep(0.05)
        return real(*a, **k)

    engine.swapper.swap_crop = slow
    engine.start(ImageSource(astronaut, fps=100), [NullSink()])
    time.sleep(1.5)
    engine.stop()
    c = engine.metrics.counters if hasattr(engine.metrics, "counters") else engine.metrics.snapshot()["counters"]
    assert c.get("dropped.worker_busy", 0) > 20
    total = engine.metrics.snapshot()["stages"]["total"]
    assert total["p50"] < 200  # latency stays near one frame's work, no backlog


def test_multiple_faces_up_to_max(model_factory, t1_path):
    from mirage_desktop.vision.image_io import load_image

    img = load_image(t1_path)
    paths = model_factory(img)
    eng = Engine(Settings(max_faces=3), model_overrides=paths)
    eng.load_models()
    eng.set_source_photos([img], "group")
    got = _collect(eng, ImageSource(img, fps=60), 10)
    assert got[-1].swapped == 3
    eng.set_option("max_faces", 6)
    got = _collect(eng, ImageSource(img, fps=60), 10)
    assert got[-1].swapped == min(6, len(got[-1].faces)) and got[-1].swapped >= 5


class FlakyCamera:
    """A camera that is unplugged for a while, then comes back (DeviceError in between)."""

    kind = "camera"
    name = "camera 0"
    fps = 30.0
    measured_fps = 0.0

    def __init__(self, img, fail_from=5, fail_for=2):
        self.img, self.n = img, 0
        self.fail_from, self.fail_for = fail_from, fail_for
        self.size = (img.shape[1], img.shape[0])
        self.unplugged = False

    def read(self):
        from mirage_desktop.errors import DeviceError

        self.n += 1
        time.sleep(1 / 30)
        if self.unplugged:
            raise DeviceError("camera 0 stopped delivering frames", "check the cable, or pick another camera")
        return self.img.copy()

    def close(self):
        pass


def test_unplugged_camera_is_reported_and_the_stream_resumes(engine, astronaut):
    cam = FlakyCamera(astronaut)
    engine.start(cam, [NullSink()])
    time.sleep(0.5)
    cam.unplugged = True
    time.sleep(0.5)
    st = engine.status()
    assert any("stopped delivering frames" in p and "check the cable" in p for p in st.problems)
    assert engine.snapshot()["health"]["level"] == "red"
    out_before = engine.metrics.counter("frames.out")
    cam.unplugged = False
    deadline = time.time() + 6
    while engine.metrics.counter("frames.out") < out_before + 5 and time.time() < deadline:
        time.sleep(0.05)
    assert engine.metrics.counter("frames.out") >= out_before + 5  # back without a restart
    assert not any("stopped delivering" in p for p in engine.status().problems)
    engine.stop()


def test_models_downloaded_while_running_take_over_without_a_restart(model_factory, astronaut):
    eng = Engine(Settings(enable_ai_mark=False))
    eng.load_models()  # nothing downloaded: pass-through
    seen = []
    eng.subscribe_frames(lambda p: seen.append(p.swapped))
    eng.start(ImageSource(astronaut, fps=30), [NullSink()])
    try:
        time.sleep(0.4)
        assert seen and not any(seen)
        eng.overrides.update(model_factory(astronaut))  # as if the models had just been downloaded
        eng.load_models()
        eng.set_source_photos([astronaut], "self")
        n = len(seen)
        deadline = time.time() + 5
        while time.time() < deadline and not any(seen[n:]):
            time.sleep(0.05)
        assert any(seen[n:]) and eng.status().passthrough == []
    finally:
        eng.stop()


class BrokenDecoder(FlakyCamera):
    """A file source whose decoder raises a non-Mirage error (cv2.error, OSError...)."""

    kind = "file"

    def read(self):
        self.n += 1
        if self.n > 5:
            raise OSError("Input/output error")
        return self.img.copy()


def test_a_source_that_raises_ends_the_stream_with_the_reason(engine, astronaut):
    engine.start(BrokenDecoder(astronaut), [NullSink()])
    assert engine.wait(5), "the stream must end, not freeze"
    assert any("Input/output error" in p for p in engine.status().problems)
    engine.stop()


class CountingSource(FlakyCamera):
    closed = 0

    def close(self):
        CountingSource.closed += 1


def test_a_failed_start_closes_what_it_opened(engine, astronaut, tmp_path):
    from mirage_desktop.errors import DeviceError

    src = CountingSource(astronaut)
    file_sink = FileSink(tmp_path / "o.mp4")
    with pytest.raises(DeviceError):
        engine.start(src, [file_sink, VirtualCameraSink(backend="v4l2loopback")])
    assert CountingSource.closed == 1 and file_sink.writer is None
    assert not engine.running


def test_lossless_render_writes_every_frame(engine, astronaut, tmp_path):
    out = tmp_path / "all.mp4"
    engine.start(ImageSource(astronaut, fps=1000, frames=40, realtime=False), [FileSink(out)], lossless=True)
    assert engine.wait(60)
    engine.stop()
    assert engine.metrics.counter("frames.out") == 40
    assert sum(v for k, v in engine.metrics.snapshot()["counters"].items() if k.startswith("dropped.")) == 0
    assert int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == 40


def test_switching_swap_back_on_forgets_old_face_positions(engine, astronaut):
    engine.start(ImageSource(astronaut, fps=30), [NullSink()])
    time.sleep(0.5)
    engine.set_option("enable_swap", False)
    time.sleep(0.3)
    engine.pipeline.tracker.tracks[0].face.bbox += 200  # a stale position from long ago
    engine.set_option("enable_swap", True)
    time.sleep(0.5)
    faces = engine.pipeline.tracker.faces()
    engine.stop()
    assert faces and faces[0].bbox[0] < 300  # re-detected where the face really is


def test_det_size_applies_while_stopped(engine):
    engine.set_option("det_size", 320)
    assert engine.settings.det_size == 320
    # the synthetic detector is a static 640 export (as some third-party exports are): it keeps
    # the only size it can run at instead of failing on every frame
    assert engine.analyzer.detector.fixed_size == 640
    assert engine.analyzer.detector.det_size == 640


def test_the_input_frame_is_copied_only_while_a_subscriber_wants_it(engine, astronaut):
    got = []
    tok = engine.subscribe_frames(got.append)
    engine.start(ImageSource(astronaut, fps=30), [NullSink()])
    time.sleep(0.4)
    assert got and all(p.original is None for p in got)  # output-only preview: no per-frame copy
    engine.set_frame_subscription(tok, True)  # side-by-side view
    n = len(got)
    time.sleep(0.4)
    engine.stop()
    assert got[-1].original is not None and len(got) > n


def test_match_mode_swaps_only_the_reference_person(model_factory, astronaut, grace_hopper_path):
    from mirage_desktop.vision.image_io import load_image

    grace = cv2.resize(load_image(grace_hopper_path), (512, 512))
    frame = np.hstack([astronaut, grace])  # two people side by side
    eng = Engine(Settings(max_faces=2, match_threshold=0.8, enable_ai_mark=False), model_overrides=model_factory(frame))
    eng.load_models()
    # (the scripted detector knows this frame's faces, so photos come from it; the largest is Grace)
    eng.set_source_photos([frame], "self")
    eng.set_reference(eng.build_identity([frame], "reference").embedding)
    got = _collect(eng, ImageSource(frame, fps=30), 12)
    last = got[-1]
    assert last.swapped == 1
    changed = np.any(last.frame != last.original, axis=2)
    assert changed[:, 512:].sum() > 1000 and not changed[:, :512].any()  # Grace swapped, not the astronaut
    eng.set_reference(None)  # any face again, largest first
    got = _collect(eng, ImageSource(frame, fps=30), 12)
    assert got[-1].swapped == 2
