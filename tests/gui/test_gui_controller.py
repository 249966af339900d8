"""The controller between window and engine: device errors, model loads, optional stages."""

from __future__ import annotations

import threading
import time

from mirage_desktop.errors import DeviceError, VirtualCameraError


class BusyCamera:
    """A webcam that another app still holds for its first ``fail_times`` opens."""

    kind = "camera"
    name = "camera 0"
    fps = 30.0
    size = (512, 512)

    def __init__(self, frame, fail_times):
        self.frame, self.fail_times, self.opens, self.cap = frame, fail_times, 0, None

    def open(self):
        self.opens += 1
        if self.opens <= self.fail_times:
            raise DeviceError("camera 0 cannot be opened", "check it is not used by another app")
        self.cap = True

    def read(self):
        time.sleep(1 / 30)
        return self.frame.copy()

    def close(self):
        self.cap = None


def _controller(qtbot, engine):
    from mirage_desktop.gui.app import create_app
    from mirage_desktop.gui.controller import EngineController

    create_app()
    c = EngineController(engine)
    notes, errors, running = [], [], []
    c.notice.connect(notes.append)
    c.error.connect(errors.append)
    c.running_changed.connect(running.append)
    return c, notes, errors, running


def test_busy_webcam_is_an_error_not_a_preview_only_stream(qtbot, make_engine, astronaut):
    eng = make_engine()
    c, notes, errors, running = _controller(qtbot, eng)
    try:
        cam = BusyCamera(astronaut, fail_times=1)
        c.start(cam, ["virtualcam"])
        qtbot.waitUntil(lambda: bool(running), timeout=15000)
        assert errors and "camera 0 cannot be opened" in errors[0]
        assert notes == [] and running == [False]
        assert not eng.running and cam.opens == 1  # not reopened without the virtual camera
    finally:
        c.shutdown()


def test_unavailable_virtual_camera_keeps_the_preview_and_says_why(qtbot, make_engine, astronaut, monkeypatch):
    from mirage_desktop.outputs import sinks
    from mirage_desktop.vision.capture import ImageSource

    def no_vcam(self, width, height, fps):
        raise VirtualCameraError("no virtual camera could be started (no loopback device)", "load v4l2loopback")

    monkeypatch.setattr(sinks.VirtualCameraSink, "open", no_vcam)
    eng = make_engine()
    c, notes, errors, running = _controller(qtbot, eng)
    try:
        c.start(ImageSource(astronaut, fps=30, realtime=True), ["virtualcam"])
        qtbot.waitUntil(lambda: bool(running), timeout=15000)
        assert running == [True] and errors == []
        assert len(notes) == 1 and notes[0].startswith("Virtual camera unavailable")
        assert "no loopback device" in notes[0]
        assert eng.running and eng.status().outputs and "virtual" not in " ".join(eng.status().outputs).lower()
    finally:
        c.shutdown()


def test_models_load_once_when_a_photo_is_added_during_the_startup_load(qtbot, make_engine, grace_hopper_path):
    eng = make_engine()
    calls = []
    real = eng.load_models

    photo_dropped = threading.Event()

    def slow_load():
        calls.append(threading.current_thread().name)
        photo_dropped.wait(60)  # the first load of real models takes seconds: still loading when the photo comes
        return real()

    eng.load_models = slow_load
    c, notes, errors, running = _controller(qtbot, eng)
    try:
        c.load_models()  # what the window does when it opens
        got = []
        c.analyse_photos([str(grace_hopper_path)], None, on_done=got.append)  # a photo dropped at once
        photo_dropped.set()
        qtbot.waitUntil(lambda: bool(got), timeout=15000)
        reports, ident, why = got[0]
        assert ident is not None, why
        assert len(calls) == 1, calls
        assert c.models_ready.is_set()
    finally:
        c.shutdown()


def test_start_and_stop_report_running_only_when_none_is_pending(qtbot, make_engine, astronaut, settle):
    """A model load or a failing call in between never reports 'not running' mid-start."""
    from mirage_desktop.vision.capture import ImageSource

    eng = make_engine()
    gate = threading.Event()
    real_start = eng.start

    def held_start(*a, **k):
        gate.wait(60)
        return real_start(*a, **k)

    eng.start = held_start
    c, notes, errors, running = _controller(qtbot, eng)
    try:
        c.start(ImageSource(astronaut, fps=30, realtime=True), ["null"])
        assert c.run_pending
        c.jobs.submit(lambda: 1 / 0, on_error=c._fail)  # any other call that fails meanwhile
        qtbot.waitUntil(lambda: bool(errors), timeout=5000)
        assert running == [] and c.run_pending
        gate.set()
        qtbot.waitUntil(lambda: bool(running), timeout=15000)
        assert running == [True] and not c.run_pending
        c.stop()
        c.start(ImageSource(astronaut, fps=30, realtime=True), ["null"])  # stop + start, e.g. a new camera
        qtbot.waitUntil(lambda: len(running) > 1, timeout=15000)
        settle(c)  # the stop and the start have both been reported
        assert running == [True, True] and eng.running  # no 'stopped' between the two
    finally:
        c.shutdown()


def test_enhancer_that_cannot_turn_on_says_why(qtbot, make_window):
    win = make_window()  # no CodeFormer weights in the (isolated) models folder
    win.toggles.enhancer.setChecked(True)
    qtbot.waitUntil(lambda: win.last_error.startswith("enhancer:"), timeout=10000)
    assert "codeformer" in win.last_error.lower()
    assert win.last_error in win.notice_bar.notices


def test_voice_that_cannot_start_says_why(qtbot, make_window, monkeypatch):
    from mirage_desktop.voice import pipeline as vp

    def no_devices(self, strict=False):
        self.error = "no microphone found — plug one in"
        return False

    monkeypatch.setattr(vp.VoicePipeline, "start", no_devices)
    win = make_window()
    win.start()
    qtbot.waitUntil(lambda: win.engine.running and win.start_btn.isEnabled(), timeout=10000)
    win.toggles.voice.enable.setChecked(True)
    qtbot.waitUntil(lambda: win.last_error.startswith("voice:"), timeout=10000)
    assert "no microphone found" in win.last_error


def test_a_working_option_reports_no_problem(qtbot, make_window, settle):
    win = make_window()
    win.set_option("detect_interval", 3)
    qtbot.waitUntil(lambda: win.engine.settings.detect_interval == 3, timeout=5000)
    settle(win)  # the call's result (or error) has come back
    assert win.last_error == "" and not win.notice_bar.notices
