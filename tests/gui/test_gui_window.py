"""The main window opens, streams into the preview, switches views and closes cleanly."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest


def _live_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("mirage-") and t.is_alive()]


def test_window_opens_streams_and_closes_cleanly(qtbot, make_window):
    win = make_window()
    assert win.isVisible()
    assert win.windowTitle() == "Mirage"
    win.start()
    qtbot.waitUntil(lambda: win.engine.running, timeout=10000)
    qtbot.waitUntil(lambda: win.preview.painted_frames >= 3, timeout=10000)
    # frames flow before the start returns (it opens the lip-sync microphone after the stream):
    # the button says Stop once the start is done
    qtbot.waitUntil(lambda: win.start_btn.text() == "Stop" and not win.controller.run_pending)
    # the status bar names the provider, the FPS and the output in use
    qtbot.waitUntil(lambda: "FPS" in win.sb_fps.text() and win.sb_fps.text()[0].isdigit(), timeout=5000)
    assert "CPU" in win.sb_provider.text()
    qtbot.waitUntil(lambda: "null" in win.sb_output.text(), timeout=5000)
    assert win.preview.image is not None and win.preview.image.width() > 100
    win.close()
    assert not win.engine.running
    qtbot.waitUntil(lambda: not _live_threads(), timeout=5000)


def test_stop_button_stops_and_start_again(qtbot, make_window):
    win = make_window()
    win.toggle_running()
    qtbot.waitUntil(lambda: win.engine.running and win.start_btn.isEnabled(), timeout=10000)
    win.start_btn.click()
    qtbot.waitUntil(lambda: not win.engine.running and win.start_btn.text() == "Start", timeout=10000)
    assert win.preview.image is None
    win.start_btn.click()
    qtbot.waitUntil(lambda: win.engine.running, timeout=10000)
    n = win.controller.feed.frames_in
    qtbot.waitUntil(lambda: win.controller.feed.frames_in > n + 3, timeout=10000)


def test_side_by_side_shows_original_and_output(qtbot, make_window):
    win = make_window()
    win.start()
    qtbot.waitUntil(lambda: win.preview.image is not None, timeout=10000)
    img = win.preview.image
    assert abs(img.width() / img.height() - 1.0) < 0.1  # the astronaut photo is square
    win.view_sbs.click()
    assert win.controller.feed.mode == "side_by_side"
    qtbot.waitUntil(lambda: win.preview.image is not None
                    and win.preview.image.width() > 1.8 * win.preview.image.height(), timeout=10000)
    win.view_output.click()
    qtbot.waitUntil(lambda: abs(win.preview.image.width() / win.preview.image.height() - 1.0) < 0.1, timeout=10000)


def test_frame_feed_renders_at_preview_size_and_drops_old_frames(qtbot):
    from mirage_desktop.gui.preview import FrameFeed

    a = np.zeros((480, 640, 3), np.uint8)
    b = np.full((480, 640, 3), 255, np.uint8)
    img = FrameFeed.render(a, b, (320, 400), "output")
    assert (img.width(), img.height()) == (320, 240)
    img = FrameFeed.render(b, a, (700, 400), "side_by_side")
    assert img.height() <= 400 and img.width() <= 700 and img.width() > 2 * img.height()
    left, right = img.pixelColor(5, img.height() // 2), img.pixelColor(img.width() - 5, img.height() // 2)
    assert left.red() == 0 and right.red() == 255  # original left, output right

    feed = FrameFeed(max_fps=1000)
    busy, release = threading.Event(), threading.Event()
    real_render = feed.render

    def first_render_is_slow(*args):  # the converter is still busy with frame 0 while the burst comes
        if not busy.is_set():
            busy.set()
            release.wait(60)
        return real_render(*args)

    feed.render = first_render_is_slow
    try:
        class P:
            def __init__(self, v):
                self.frame = np.full((40, 40, 3), v, np.uint8)
                self.original = None
        feed.on_packet(P(0))
        assert busy.wait(60)
        for v in range(1, 50):  # a burst: only the newest matters
            feed.on_packet(P(v))
        release.set()
        qtbot.waitUntil(lambda: feed.frames_shown == 2)  # frame 0, then straight to the newest
        shown = feed.take_image()
        assert shown is not None and shown.pixelColor(1, 1).red() == 49
        assert feed.frames_in == 50 and feed.frames_shown == 2
    finally:
        release.set()
        feed.close()


def test_mirage_without_arguments_opens_the_window(monkeypatch):
    import mirage_desktop.cli as cli
    import mirage_desktop.commands.gui as gui_cli

    seen = {}
    monkeypatch.setattr(gui_cli, "run", lambda args: seen.setdefault("args", args) and 0)
    assert cli.main([]) == 0
    assert seen["args"]._module == "mirage_desktop.commands.gui"


def test_build_window_from_command_line_arguments(qtbot, tmp_path, astronaut, gui_models):
    import cv2

    from mirage_desktop.commands.gui import add_arguments, build_window

    photo = tmp_path / "cam.png"
    cv2.imwrite(str(photo), astronaut)
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--input", str(photo), "--output", "null", "--no-autostart",
                         "--model", f"w600k_r50={gui_models['w600k_r50']}",
                         "--model", f"inswapper_128_fp16={gui_models['inswapper_128_fp16']}"])
    win = build_window(args)
    qtbot.addWidget(win)
    try:
        assert win.current_source() == str(photo)
        assert win.current_outputs() == ["null"]
        qtbot.waitUntil(win.controller.models_ready.is_set, timeout=15000)
        qtbot.waitUntil(lambda: "inswapper" in win.sb_models.text(), timeout=5000)
        win.start()
        qtbot.waitUntil(lambda: win.preview.painted_frames > 0 or win.preview.image is not None, timeout=10000)
    finally:
        win.close()


def test_signal_emits_do_not_drain_the_reference_count_of_true(qtbot):
    """PySide6 6.12 returns a borrowed True from emit(); thousands of preview frames would
    then abort CPython ('bool_dealloc'). Every emit in the GUI gives the reference back."""
    import sys

    from mirage_desktop.gui.preview import FrameFeed

    class P:
        frame = np.zeros((8, 8, 3), np.uint8)
        original = None

    feed = FrameFeed(max_fps=10_000)
    try:
        before = sys.getrefcount(True)
        for i in range(200):
            feed.on_packet(P())
            qtbot.waitUntil(lambda: feed.frames_shown > i, timeout=2000)
            qtbot.waitUntil(lambda: feed.take_image() is not None or not feed._pending, timeout=2000)
        assert feed.frames_shown == 200
        assert sys.getrefcount(True) - before > -40  # without the fix: about -frames_shown
    finally:
        feed.close()


def test_painting_does_not_drain_the_reference_count_of_none(qtbot, make_window):
    """Same binding bug for None on Python < 3.12: a running window must not get near zero."""
    import sys

    from PySide6.QtGui import QPainterPath

    win = make_window()
    before_none, before_true = sys.getrefcount(None), sys.getrefcount(True)
    path = QPainterPath()
    for _ in range(20000):
        path.lineTo(1.0, 1.0)
    win.start()
    qtbot.waitUntil(lambda: win.preview.painted_frames > 10, timeout=10000)
    # without a fixed binding (or the guard in gui/qtcompat.py) each call above loses a reference
    assert sys.getrefcount(None) - before_none > -1000 and sys.getrefcount(True) - before_true > -1000


def test_start_button_stays_disabled_until_the_start_finishes(qtbot, make_window, settle):
    """A model load that ends, or an error, while a start is still opening the camera must
    not offer Start again (a second press used to fail with 'already running')."""
    win = make_window()
    eng = win.engine
    gate, loading = threading.Event(), threading.Event()
    real_load, real_start = eng.load_models, eng.start

    def slow_load():  # still loading when Start is pressed
        loading.wait(60)
        return real_load()

    def held_start(*a, **k):  # opening a real webcam and virtual camera takes a while
        gate.wait(10)
        return real_start(*a, **k)

    eng.load_models, eng.start = slow_load, held_start
    loaded = []
    win.controller.models_loaded.connect(loaded.append)
    win.controller.load_models()  # e.g. after a download in the Models tab
    win.start_btn.click()
    assert not win.start_btn.isEnabled()
    loading.set()
    qtbot.waitUntil(lambda: bool(loaded), timeout=5000)
    assert not eng.running and not win.start_btn.isEnabled()
    assert win.preview._message == "Starting…"
    win.set_option("det_size", 123)  # an error meanwhile
    assert "det_size" in win.last_error and not win.start_btn.isEnabled()
    win.toggle_running()  # a press now is ignored
    gate.set()
    qtbot.waitUntil(lambda: eng.running and win.start_btn.isEnabled(), timeout=10000)
    settle(win)  # every queued call and its callback has run
    assert eng.running and win.start_btn.text() == "Stop"
    assert "already" not in win.last_error


def test_closing_hides_the_window_at_once_and_does_not_wait_for_pool_jobs(qtbot, make_window):
    win = make_window()
    gate, started = threading.Event(), threading.Event()

    def photo_check():  # e.g. a photo check still running
        started.set()
        return gate.wait(60)

    job = win.controller.jobs.submit(photo_check)
    assert started.wait(60)
    seen = {}
    real = win.controller.shutdown

    def shutdown():
        seen["visible"] = win.isVisible()
        real()

    win.controller.shutdown = shutdown
    try:
        win.close()
        running_after_close = job.running()  # close returned while the job was still at work
    finally:
        gate.set()
    assert seen == {"visible": False}  # hidden before anything is waited for
    assert running_after_close
    assert job.result(60) is True


def test_settings_saves_land_in_the_order_they_were_made(qtbot, make_window, monkeypatch):
    """A slow first write (a busy disk) is still running when the second save is made: the second
    starts only after the first has landed, and the file ends with the last settings."""
    from mirage_desktop import config

    win = make_window()
    real = config.save
    events = []
    second_made = threading.Event()

    def save(s):
        events.append(("start", s.output_fps))
        if s.output_fps == 15:
            second_made.wait(60)  # slow until the next save has been asked for
        path = real(s)
        events.append(("written", s.output_fps))  # the file is on disk now
        return path

    monkeypatch.setattr(config, "save", save)
    win.set_option("output_fps", 15)
    first = win.save_settings()
    win.set_option("output_fps", 30)
    second = win.save_settings()
    second_made.set()
    assert second.result(60) == config.settings_path()  # waits for the real end of the last write
    assert first.done() and first.exception() is None
    assert events == [("start", 15), ("written", 15), ("start", 30), ("written", 30)]
    assert config.load().settings.output_fps == 30


def test_cancelled_file_dialog_keeps_the_chosen_camera(qtbot, make_window, monkeypatch):
    from mirage_desktop.gui import window as window_mod

    win = make_window()
    win._fill_cameras([{"index": 0, "name": "Cam A"}, {"index": 1, "name": "Cam B"}])
    b = win.camera.findText("Cam B")
    win.camera.setCurrentIndex(b)
    win._camera_chosen(b)
    assert win.current_source() == 1
    monkeypatch.setattr(window_mod.QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: ("", "")))
    f = win.camera.count() - 1
    assert win.camera.itemData(f)[0] == "file"
    win.camera.setCurrentIndex(f)
    win._camera_chosen(f)
    assert win.camera.currentIndex() == b and win.current_source() == 1


def test_input_frames_are_copied_only_while_side_by_side(qtbot, make_window):
    win = make_window()
    assert win.controller.feed.mode == "output"
    win.start()
    qtbot.waitUntil(lambda: win.engine.running and win.preview.image is not None, timeout=10000)
    p = win.engine.pipeline
    assert not p.keep_original
    win.view_sbs.click()
    qtbot.waitUntil(lambda: p.keep_original, timeout=5000)
    qtbot.waitUntil(lambda: win.preview.image is not None
                    and win.preview.image.width() > 1.8 * win.preview.image.height(), timeout=10000)
    win.view_output.click()
    qtbot.waitUntil(lambda: not p.keep_original, timeout=5000)


@pytest.mark.parametrize("saved", ["1", "/dev/video1"])
def test_the_saved_camera_is_chosen_again_by_index_or_device_path(qtbot, make_window, saved):
    win = make_window()
    win._source = None  # a real webcam user: no demo image
    win.set_option("camera", saved)
    qtbot.waitUntil(lambda: win.engine.settings.camera == saved)
    win._fill_cameras([{"index": 0, "device": "/dev/video0", "name": "Cam A"},
                       {"index": 1, "device": "/dev/video1", "name": "Cam B"}])
    assert win.camera.currentText() == "Cam B" and win.current_source() == 1
    a = win.camera.findText("Cam A")
    win.camera.setCurrentIndex(a)
    win._camera_chosen(a)
    qtbot.waitUntil(lambda: win.settings.camera != saved)  # the choice reaches the engine's settings
    assert win.settings.camera == "0"  # stored as the setting's type: a string
