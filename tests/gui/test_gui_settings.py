"""Settings: saved atomically in the config dir, survive a restart and a corrupt file."""

from __future__ import annotations

import argparse
import json


def _file_settings():
    from mirage_desktop import config

    p = config.settings_path()
    return json.loads(p.read_text()) if p.exists() else {}


def test_settings_survive_a_restart(qtbot, make_window):
    from mirage_desktop import config

    win = make_window()
    win.toggles.max_faces.setValue(2)
    win.toggles.mouth.click()
    win.toggles.det_size.setCurrentIndex(win.toggles.det_size.findData(320))
    win.toggles.fidelity.slider.setValue(6)
    win.set_view("side_by_side")
    win.resolution.setCurrentIndex(win.resolution.findData("1280x720"))
    # saved soon after the change, not only on close
    qtbot.waitUntil(lambda: _file_settings().get("max_faces") == 2 and _file_settings().get("det_size") == 320,
                    timeout=5000)
    win.close()
    saved = _file_settings()
    assert saved["enable_mouth_mask"] is True and saved["codeformer_fidelity"] == 0.3
    assert saved["output_width"] == 1280 and saved["extra"]["gui"]["view"] == "side_by_side"
    assert not [p for p in config.config_dir().iterdir() if p.name.endswith(".tmp")]

    win2 = make_window()
    s = win2.engine.settings
    assert (s.max_faces, s.enable_mouth_mask, s.det_size, s.codeformer_fidelity) == (2, True, 320, 0.3)
    assert win2.toggles.max_faces.value() == 2 and win2.toggles.mouth.isChecked()
    assert win2.toggles.det_size.currentData() == 320 and win2.toggles.fidelity.value() == 0.3
    assert win2.controller.feed.mode == "side_by_side" and win2.view_sbs.isChecked()
    assert win2.resolution.currentData() == "1280x720"


def test_corrupt_settings_file_is_set_aside_with_a_notice(qtbot, tmp_path):
    from mirage_desktop import config
    from mirage_desktop.commands.gui import add_arguments, build_window

    path = config.settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"max_faces": 4, oops')
    p = argparse.ArgumentParser()
    add_arguments(p)
    win = build_window(p.parse_args(["--no-autostart", "--output", "null"]))
    qtbot.addWidget(win)
    try:
        assert win.notice_bar.isVisibleTo(win)
        text = win.notice_bar.label.text()
        assert "unreadable" in text and "using defaults" in text
        assert win.engine.settings.max_faces == 1  # defaults
        aside = [x for x in path.parent.iterdir() if x.name.startswith("settings.json.corrupt-")]
        assert len(aside) == 1 and aside[0].read_text() == '{"max_faces": 4, oops'
        win.notice_bar.dismiss()
        assert not win.notice_bar.isVisibleTo(win)
    finally:
        win.close()
    # closing writes a good file again
    assert json.loads(path.read_text())["max_faces"] == 1


def test_the_window_reads_the_engines_settings_and_keeps_no_copy(qtbot, make_window, settle):
    import pytest

    win = make_window()
    assert win.settings is win.engine.settings
    with pytest.raises(AttributeError):
        win.settings = win.settings.replace(max_faces=4)  # no copy to change behind the engine's back
    win.toggles.max_faces.setValue(3)
    qtbot.waitUntil(lambda: win.engine.settings.max_faces == 3)  # the change went to the engine
    assert win.settings is win.engine.settings
    # a change made through the engine's API is what the window saves
    win.controller.jobs.submit(win.engine.set_option, "detect_interval", 7, serial=True)
    settle(win)
    win.save_settings().result(60)
    saved = _file_settings()
    assert (saved["max_faces"], saved["detect_interval"]) == (3, 7)


def test_a_change_made_just_before_closing_is_saved(qtbot, make_window):
    """The engine call of a change still queued when the window closes is cancelled; the change is
    kept in the settings all the same."""
    import threading

    win = make_window()
    jobs = win.controller.jobs
    gate, busy = threading.Event(), threading.Event()

    def engine_call():  # the engine thread is busy (a model load, say)
        busy.set()
        gate.wait(120)

    jobs.submit(engine_call, serial=True)
    # running before the change is queued: else the engine thread, starting late on a loaded machine,
    # can take the change off the queue while shutdown is cancelling the queued jobs
    assert busy.wait(120)
    win.toggles.max_faces.setValue(5)
    fut = win.controller.set_option("det_size", 320)  # queued behind it
    real = jobs.shutdown

    def shutdown(wait=True, wait_pool=None):
        jobs._serial.shutdown(wait=False, cancel_futures=True)  # the queued changes are cancelled...
        gate.set()  # ...and the busy call ends
        real(wait, wait_pool)

    jobs.shutdown = shutdown
    win.close()
    assert fut.cancelled()
    saved = _file_settings()
    assert (saved["max_faces"], saved["det_size"]) == (5, 320)


def test_one_off_environment_values_are_not_saved(qtbot, make_window, monkeypatch):
    monkeypatch.setenv("MIRAGE_MAX_FACES", "3")
    win = make_window()
    assert win.engine.settings.max_faces == 3 and win.toggles.max_faces.value() == 3
    win.toggles.mouth.click()
    qtbot.waitUntil(lambda: win.engine.settings.enable_mouth_mask)
    win.close()
    saved = _file_settings()
    assert saved["enable_mouth_mask"] is True and "max_faces" not in saved
