"""The live pipeline end to end: still image as camera → swap → virtual camera / file / callback.

Nothing here waits for time to pass or asserts on how long anything took: each test waits for
the frames it needs (``Frames``: "the n-th frame captured after this point", so frames still
in flight under the old options never count), for a counter, or for a stage it holds itself
(``Gate``). The timeouts are hang guards only."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import pytest
import pyvirtualcam
from tests_support import HANG_GUARD_S, CallbackSink, Frames, Gate, now, wait_counter

from mirage_desktop.config import Settings
from mirage_desktop.engine import Engine
from mirage_desktop.metrics import Metrics
from mirage_desktop.outputs.sinks import FileSink, NullSink, VirtualCameraSink
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
    """The first ``n`` frames of a run (each with its input frame), then stop."""
    frames = Frames(engine, want_original=True)  # before start: every frame has its original
    engine.start(source, [CallbackSink(lambda f: None)], **kw)
    try:
        frames.after(frames.created, n)
    finally:
        frames.close()
        engine.stop()
    return frames.since(frames.created)[:n]


def _swapping(engine, source, more=3):
    """Run until the first frame with a face chosen for swapping, and ``more`` frames after it."""
    frames = Frames(engine, want_original=True)
    engine.start(source, [NullSink()])
    try:
        first = frames.first(lambda p: p.faces)
        frames.after(first.t_capture, more)
    finally:
        frames.close()
        engine.stop()
    return first, frames.since(first.t_capture)


def test_metrics_wait_for_wakes_when_a_counter_reaches_n():
    m = Metrics()
    assert m.wait_for("x", 0, 0) and not m.wait_for("x", 1, 0)  # already there / not yet: no waiting
    result = []
    started = threading.Event()

    def waiter():
        started.set()
        result.append(m.wait_for("x", 3, HANG_GUARD_S))

    t = threading.Thread(target=waiter)
    t.start()
    started.wait()
    m.incr("y", 5)  # another counter does not satisfy it
    m.incr("x")
    m.incr("x", 2)
    t.join(HANG_GUARD_S)
    assert result == [True] and m.counter("x") == 3  # woken by incr, not by the timeout


def test_virtual_camera_backend_receives_swapped_frames(engine, astronaut):
    pyvirtualcam.register_backend("mirage-test", RecordingBackend)
    RecordingBackend.frames.clear()
    RecordingBackend.opened.clear()
    sink = VirtualCameraSink(backend="mirage-test", width=640, height=360, fps=30)
    frames = Frames(engine)
    engine.start(ImageSource(astronaut, fps=60), [sink])
    swapped = frames.first(lambda p: p.swapped)
    frames.after(swapped.t_capture, 3)
    engine.stop()
    from pyvirtualcam.util import encode_fourcc

    assert RecordingBackend.opened == [(640, 360, 30.0, encode_fourcc(pyvirtualcam.PixelFormat.BGR.value))]
    sent = frames.since(frames.created)
    # the call app received every frame that left the pipeline, in order, and nothing else
    assert len(RecordingBackend.frames) == len(sent) == engine.metrics.counter("frames.out") >= 4
    for pkt, f in zip(sent, RecordingBackend.frames):
        assert f.dtype == np.uint8 and f.size == 640 * 360 * 3  # BGR, as requested
        np.testing.assert_array_equal(f.reshape(360, 640, 3),
                                      cv2.resize(pkt.frame, (640, 360), interpolation=cv2.INTER_AREA))
    img = RecordingBackend.frames[sent.index(swapped)].reshape(360, 640, 3)
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
    engine.start(ImageSource(astronaut, fps=20), [FileSink(out)], max_frames=8)  # live, as --frames 8
    assert engine.wait(HANG_GUARD_S)
    engine.stop()
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == engine.metrics.counter("frames.out") == 8  # every frame sent is in the file
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (512, 512)


def test_swap_toggles_live_and_identity_switches_within_frames(engine, astronaut):
    first, later = _swapping(engine, ImageSource(astronaut, fps=60))
    for p in [first, *later]:  # from the first frame with a face on, every frame is swapped
        assert p.swapped == 1 and np.any(p.frame != p.original)

    engine.set_option("enable_ai_mark", False)
    engine.set_option("enable_swap", False)
    got = _collect(engine, ImageSource(astronaut, fps=60), 5)
    assert all(np.array_equal(p.frame, p.original) for p in got)  # pure pass-through
    assert "face swap is switched off" in engine.status().passthrough[0]


def test_identity_switch_while_running(engine, astronaut, grace_hopper_path):
    def face(p):
        return p.frame[95:135, 205:245].astype(int)

    frames = Frames(engine)
    engine.start(ImageSource(astronaut, fps=60), [NullSink()])
    before = frames.first(lambda p: p.swapped)  # the mirrored astronaut's face
    engine.set_source_photos([grace_hopper_path], "grace")
    switched = now()
    first = frames.after(switched, 1)
    engine.stop()
    # the very first frame captured after the switch already shows the new face
    assert first.swapped == 1
    assert np.abs(face(first) - face(before)).mean() > 1.0


def test_a_failing_model_sends_the_frame_unswapped_and_logs_once(engine, astronaut, caplog):
    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory")

    engine.swapper.swap_crop = boom
    engine.set_option("enable_ai_mark", False)
    frames = Frames(engine, want_original=True)
    with caplog.at_level(logging.WARNING):
        engine.start(ImageSource(astronaut, fps=60), [NullSink()])
        frames.after(frames.created, 5, where=lambda p: p.faces)  # five frames on which a swap was tried
        frames.after(frames.created, 10)
        engine.stop()
    got = frames.since(frames.created)
    tried = [p for p in got if p.faces]
    assert len(got) == engine.metrics.counter("frames.out") >= 10 and len(tried) >= 5
    assert all(np.array_equal(p.frame, p.original) for p in got)  # sent as they came in
    assert all(p.swapped == 0 for p in tried)
    assert engine.metrics.counter("errors.swap") >= len(tried)  # each failed try counted
    assert caplog.text.count("CUDA out of memory") == 1  # and logged once


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


class NumberedFrames(ImageSource):
    """The still photo as a camera; each frame carries its number in its top-left pixels, so a
    stage can tell which frame it was given (the face, where the work happens, is far from there)."""

    def read(self):
        frame = super().read()
        if frame is not None:
            frame[0, :4, 0] = np.frombuffer(np.uint32(self._n - 1).tobytes(), np.uint8)
        return frame


def frame_number(frame) -> int:
    return int(np.frombuffer(frame[0, :4, 0].tobytes(), np.uint32)[0])


def test_slow_worker_drops_frames_instead_of_queueing(engine, astronaut):
    """The worker is held on one frame (as by a very slow model) for as long as the test wants:
    the camera keeps going, every frame it replaces is counted as dropped, and the next frame
    the worker gets is one of the newest, not a backlog of old ones."""
    gate, order = Gate(), []  # order: the number of each frame the worker swapped, in turn
    real = engine.swapper.swap

    def swap(frame, *a, **k):
        order.append(frame_number(frame))
        if len(order) == 1:  # the first swap holds the worker until the test lets go
            gate.enter()
        return real(frame, *a, **k)

    engine.swapper.swap = swap
    frames = Frames(engine)
    m = engine.metrics
    engine.start(NumberedFrames(astronaut, fps=100), [NullSink()])
    try:
        gate.wait_reached()
        worked = m.histogram("worker").count  # frames finished before the held one
        wait_counter(m, "dropped.worker_busy", m.counter("dropped.worker_busy") + 20)
        assert m.histogram("worker").count == worked  # capture ran on while the worker was held
        captured = m.counter("frames.in")  # frames 0 .. captured-1 exist; captured-2 was handed over
    finally:
        gate.open()
    frames.after(now(), 2)  # the worker has moved on
    engine.stop()
    held, after = order[0], order[1]
    assert after >= captured - 2 and after - held > 20, order  # the newest frame next: nothing queued
    assert order == sorted(order)
    # every frame captured was either worked on or counted as dropped (one may be cut off by stop)
    unaccounted = m.counter("frames.in") - m.histogram("worker").count - m.counter("dropped.worker_busy")
    assert unaccounted in (0, 1), unaccounted


def test_multiple_faces_up_to_max(model_factory, t1_path):
    from mirage_desktop.vision.image_io import load_image

    img = load_image(t1_path)
    paths = model_factory(img)
    eng = Engine(Settings(max_faces=3), model_overrides=paths)
    eng.load_models()
    eng.set_source_photos([img], "group")
    first, later = _swapping(eng, ImageSource(img, fps=60))
    assert all(p.swapped == len(p.faces) == 3 for p in [first, *later])
    eng.set_option("max_faces", 6)
    first, later = _swapping(eng, ImageSource(img, fps=60))
    assert all(p.swapped == len(p.faces) == min(6, len(p.faces)) and p.swapped >= 5 for p in [first, *later])


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
    frames = Frames(engine)
    engine.start(cam, [NullSink()])
    frames.after(frames.created, 3)  # streaming
    cam.unplugged = True
    wait_counter(engine.metrics, "errors.capture", 1)  # the driver error reached the capture thread
    st = engine.status()
    assert any("stopped delivering frames" in p and "check the cable" in p for p in st.problems)
    assert engine.snapshot()["health"]["level"] == "red"
    cam.unplugged = False
    back = now()
    frames.after(back, 5)  # five frames captured after the camera came back: no restart needed
    assert not any("stopped delivering" in p for p in engine.status().problems)
    engine.stop()


def test_models_downloaded_while_running_take_over_without_a_restart(model_factory, astronaut):
    eng = Engine(Settings(enable_ai_mark=False))
    eng.load_models()  # nothing downloaded: pass-through
    frames = Frames(eng)
    eng.start(ImageSource(astronaut, fps=30), [NullSink()])
    try:
        frames.after(frames.created, 3)
        assert not any(p.swapped for p in frames.since(frames.created))
        eng.overrides.update(model_factory(astronaut))  # as if the models had just been downloaded
        eng.load_models()
        eng.set_source_photos([astronaut], "self")
        frames.first(lambda p: p.swapped, now())  # the running stream swaps (a hang guard, no deadline)
        assert eng.status().passthrough == []
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
    assert engine.wait(HANG_GUARD_S), "the stream must end, not freeze"
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
    from mirage_desktop.vision.pipeline import _OPENCV_THREADS

    assert _OPENCV_THREADS._users == 0  # OpenCV's threads are not held for a stream that never ran


def test_lossless_render_writes_every_frame(engine, astronaut, tmp_path):
    out = tmp_path / "all.mp4"
    engine.start(ImageSource(astronaut, fps=1000, frames=40, realtime=False), [FileSink(out)], lossless=True)
    assert engine.wait(HANG_GUARD_S)
    engine.stop()
    assert engine.metrics.counter("frames.out") == 40
    assert sum(v for k, v in engine.metrics.snapshot()["counters"].items() if k.startswith("dropped.")) == 0
    assert int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == 40


def test_switching_swap_back_on_forgets_old_face_positions(engine, astronaut):
    frames = Frames(engine)
    engine.start(ImageSource(astronaut, fps=30), [NullSink()])
    assert frames.first(lambda p: p.faces).faces[0].bbox[0] < 300  # tracked where the face is
    engine.set_option("enable_swap", False)
    frames.after(now(), 1)  # a frame made with swap off is out: the worker leaves the tracker alone now
    tracks = engine.pipeline.tracker.tracks
    if tracks:  # kept while swap is off (a pipeline may also forget them right away: nothing stale then)
        tracks[0].face.bbox += 200  # a stale position from long ago
    engine.set_option("enable_swap", True)
    on = now()
    found = frames.first(lambda p: p.faces, on)
    engine.stop()
    assert found.faces[0].bbox[0] < 300  # re-detected where the face really is
    # and no frame since switching back on carried the stale position
    assert all(p.faces[0].bbox[0] < 300 for p in frames.since(on) if p.faces)


def test_det_size_applies_while_stopped(engine):
    engine.set_option("det_size", 320)
    assert engine.settings.det_size == 320
    # the synthetic detector is a static 640 export (as some third-party exports are): it keeps
    # the only size it can run at instead of failing on every frame
    assert engine.analyzer.detector.fixed_size == 640
    assert engine.analyzer.detector.det_size == 640


def test_the_input_frame_is_copied_only_while_a_subscriber_wants_it(engine, astronaut):
    frames = Frames(engine)  # an output-only preview
    engine.start(ImageSource(astronaut, fps=30), [NullSink()])
    frames.after(frames.created, 3)
    assert all(p.original is None for p in frames.since(frames.created))  # no per-frame copy
    engine.set_frame_subscription(frames.token, True)  # side-by-side view
    wanted = now()
    frames.after(wanted, 3)
    engine.stop()
    later = frames.since(wanted)
    assert len(later) >= 3 and all(p.original is not None for p in later)


def test_match_mode_swaps_only_the_reference_person(model_factory, astronaut, grace_hopper_path):
    from mirage_desktop.vision.image_io import load_image

    grace = cv2.resize(load_image(grace_hopper_path), (512, 512))
    frame = np.hstack([astronaut, grace])  # two people side by side
    eng = Engine(Settings(max_faces=2, match_threshold=0.8, enable_ai_mark=False), model_overrides=model_factory(frame))
    eng.load_models()
    # (the scripted detector knows this frame's faces, so photos come from it; the largest is Grace)
    eng.set_source_photos([frame], "self")
    eng.set_reference(eng.build_identity([frame], "reference").embedding)
    first, later = _swapping(eng, ImageSource(frame, fps=30))
    for p in [first, *later]:
        assert p.swapped == 1
        changed = np.any(p.frame != p.original, axis=2)
        assert changed[:, 512:].sum() > 1000 and not changed[:, :512].any()  # Grace swapped, not the astronaut
    eng.set_reference(None)  # any face again, largest first
    first, later = _swapping(eng, ImageSource(frame, fps=30))
    assert all(p.swapped == 2 for p in [first, *later])


def test_the_detectors_real_interval_and_lag_are_measured(engine, astronaut):
    """Between two detections: the frames the worker processed (the schedule's unit) and the
    camera frames captured; the lag runs from a frame's capture to its faces being used."""
    m = engine.metrics
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)  # what the process had before the stream (whatever the machine)
    engine.start(ImageSource(astronaut, fps=100), [NullSink()])
    try:
        wait_counter(m, "detect.runs", 5)
        runs = m.counter("detect.runs")
        assert m.wait_for("frames.out", m.counter("frames.out") + 2, HANG_GUARD_S)
        threads_while_running = cv2.getNumThreads()
    finally:
        engine.stop()
    done = m.histogram("detect.interval").values()
    captured = m.histogram("detect.interval_captured").values()
    lag = m.histogram("detect.lag").values()
    assert len(done) >= runs - 2 and len(captured) >= len(done) - 1 and len(lag) >= runs - 1
    # after the first (no face yet: the next frame may ask again), the face is sure (0.9): never sooner
    assert done[1:].min() >= engine.settings.detect_interval
    assert captured.min() >= done.min() and (lag > 0).all()
    # the core gate the loader put between the detector and the swapper on this CPU
    assert engine.analyzer.detector.handle.gate is engine.swapper.handle.gate is not None
    # OpenCV's own threads are off while a stream runs (the face-box calls lose by splitting),
    # and back to what they were once it stopped (the window's work after a stream keeps them)
    after = cv2.getNumThreads()
    cv2.setNumThreads(before)
    assert threads_while_running == 1 and after == 2
