"""Lip sync and load in the window (issue 10): the lip-sync microphone, the A/V trim and "Adapt to
load" reach the running engine and the settings file; a value the engine refuses goes back out of
the control; snapshots with and without the A/V offset reach its plot (the plot itself:
test_gui_plots.py); the degrade ladder's step is shown in yellow with its level.

No wall-clock bounds and no sleeps in the tests: waits end on what they wait for (the conftest's
deadline only bounds a broken build). The one ``time.sleep`` is the load of a slow stage (a lower
bound on a frame's cost, so it is over the frame budget on any machine), as in the vision tests."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest


def _file_settings() -> dict:
    from mirage_desktop import config

    p = config.settings_path()
    return json.loads(p.read_text()) if p.exists() else {}


def _run(qtbot, win):
    win.start()
    qtbot.waitUntil(lambda: win.engine.running)
    qtbot.waitUntil(lambda: win.controller.feed.frames_in > 2)
    return win.engine.pipeline


def _quiet(qtbot, win):
    """Only the snapshots the test hands the window (no timer snapshots in between)."""
    win.controller.timer.stop()
    qtbot.waitUntil(lambda: not win.controller._snap_inflight)


# ---- the controls ------------------------------------------------------------------------------
def test_lip_sync_trim_and_adapt_apply_live_and_are_saved(qtbot, make_window, settle):
    from PySide6.QtCore import Qt

    win = make_window()
    t = win.toggles
    assert t.lipsync.isChecked() and t.adapt.isChecked() and t.av_trim.value() == 0  # the defaults
    assert "virtual microphone" in t.lipsync.toolTip() and "later" in t.av_trim.toolTip()
    assert t.av_trim.singleStep() == 10 and t.av_trim.suffix() == " ms"
    pipeline = _run(qtbot, win)
    sent = []
    t.option_changed.connect(lambda n, v: sent.append((n, v)))
    t.lipsync.click()
    t.av_trim.stepBy(12)  # twelve arrow steps of 10 ms
    t.adapt.click()
    qtbot.waitUntil(lambda: pipeline.av.trim_s == pytest.approx(0.120))
    qtbot.waitUntil(lambda: not pipeline.ladder.enabled)
    s = win.engine.settings
    assert (s.lipsync_mic, s.av_trim_ms, s.adapt_video) == (False, 120.0, False)
    assert pipeline.opts.av_trim_ms == 120.0 and not pipeline.opts.lipsync_mic
    assert sent == [("lipsync_mic", False), ("av_trim_ms", 120.0), ("adapt_video", False)]
    # a typed value applies once, on Enter (not "-", "-2", "-25" on the way)
    sent.clear()
    t.av_trim.lineEdit().selectAll()
    qtbot.keyClicks(t.av_trim, "-250")
    assert sent == []
    qtbot.keyClick(t.av_trim, Qt.Key_Return)
    assert sent == [("av_trim_ms", -250.0)]
    qtbot.waitUntil(lambda: pipeline.av.trim_s == pytest.approx(-0.250))
    assert win.engine.pipeline is pipeline, "the stream was restarted"
    # saved soon after the change, and shown again by the next window
    qtbot.waitUntil(lambda: _file_settings().get("av_trim_ms") == -250.0)
    saved = _file_settings()
    assert saved["lipsync_mic"] is False and saved["adapt_video"] is False
    settle(win)
    win.close()
    win2 = make_window()
    t2 = win2.toggles
    assert not t2.lipsync.isChecked() and not t2.adapt.isChecked() and t2.av_trim.value() == -250
    assert (win2.engine.settings.av_trim_ms, win2.engine.settings.lipsync_mic) == (-250.0, False)


@pytest.fixture
def refusing(monkeypatch):
    """The engine refuses some values the way it refuses a live value a part cannot take: the part's
    live effect raises, the engine puts its settings back and raises (Engine.set_option)."""
    from mirage_desktop.engine import Engine
    from mirage_desktop.errors import MirageError

    refused = {("av_trim_ms", 200.0), ("lipsync_mic", False), ("adapt_video", False)}

    def effect(engine, name, value):
        if (name, value) in refused:
            raise MirageError(f"{name} {value} refused by the test's part", "choose another value")

    for name in ("av_trim_ms", "adapt_video"):
        monkeypatch.setitem(Engine._LIVE_EFFECTS, name, effect)
    voice_switch = Engine._LIVE_EFFECTS["lipsync_mic"]

    def lipsync(engine, name, value):
        effect(engine, name, value)
        voice_switch(engine, name, value)

    monkeypatch.setitem(Engine._LIVE_EFFECTS, "lipsync_mic", lipsync)
    return refused


def test_a_value_the_engine_refuses_goes_back_out_of_the_control(qtbot, make_window, settle, refusing):
    win = make_window()
    t = win.toggles
    _run(qtbot, win)
    t.av_trim.setValue(200)
    t.lipsync.click()
    t.adapt.click()
    settle(win)
    assert "refused by the test's part" in win.last_error
    s = win.engine.settings
    assert (s.av_trim_ms, s.lipsync_mic, s.adapt_video) == (0.0, True, True)  # the engine kept its values
    assert t.av_trim.value() == 0 and t.lipsync.isChecked() and t.adapt.isChecked()  # and the controls show them
    assert "Pinned" not in t.adapt_state.text()
    win.save_settings().result(60)
    saved = _file_settings()
    assert saved.get("av_trim_ms", 0.0) == 0.0 and saved.get("lipsync_mic", True) is True
    # a value that is accepted still applies
    t.av_trim.setValue(50)
    qtbot.waitUntil(lambda: win.engine.pipeline.av.trim_s == pytest.approx(0.050))
    settle(win)
    assert t.av_trim.value() == 50


def test_a_refusal_does_not_undo_a_later_change_still_on_its_way(qtbot, make_window, settle, refusing):
    win = make_window()
    t, jobs = win.toggles, win.controller.jobs
    first, second = threading.Event(), threading.Event()
    jobs.submit(first.wait, 60, serial=True)  # the engine thread is busy (a model load, say)
    t.av_trim.setValue(200)  # refused...
    jobs.submit(second.wait, 60, serial=True)
    t.av_trim.setValue(300)  # ...and this one waits behind it
    try:
        first.set()
        qtbot.waitUntil(lambda: "refused" in win.last_error)  # the refusal reached the window
        assert t.av_trim.value() == 300  # the change still on its way decides what the control shows
    finally:
        first.set()
        second.set()
    settle(win)
    assert win.engine.settings.av_trim_ms == 300.0 and t.av_trim.value() == 300


# ---- the A/V offset plot in the window ----------------------------------------------------------
def test_the_window_plots_snapshots_with_and_without_an_av_offset(qtbot, make_window, av_snap):
    win = make_window()
    _quiet(qtbot, win)
    n = win.av_plot.paints
    win._on_snapshot(av_snap(av=(-15.0, 2.0)))
    win._on_snapshot(av_snap())
    qtbot.waitUntil(lambda: win.av_plot.paints > n)
    assert list(win.history.av_offset[0])[-2] == -15.0 and math.isnan(win.history.av_offset[0][-1])
    assert win.av_plot.notes == ("voice off", "") and win.av_plot.has_data()
    win.span_switch.buttons[60.0].click()
    assert win.av_plot.span_s == 60.0  # the span switch sets it with the other plots


# ---- the degrade ladder ------------------------------------------------------------------------
ADAPT = {"source": "adapt", "level": "warning", "message": "reduced detection size to 480 to keep 30 FPS",
         "fix": "turn adaptation off to keep your settings (--no-adapt, or 'Adapt to load' in the window)"}


def test_the_ladders_step_is_shown_in_yellow_with_its_level(qtbot, make_window, av_snap):
    from mirage_desktop.gui import theme

    win = make_window()
    _quiet(qtbot, win)
    t = win.toggles
    assert "Pinned" not in t.adapt_state.text() and theme.YELLOW not in t.adapt_state.styleSheet()
    win._on_snapshot(av_snap(issues=[ADAPT], level=2))
    assert t.adapt_state.text() == "Step 2: reduced detection size to 480 to keep 30 FPS."
    assert theme.YELLOW in t.adapt_state.styleSheet()
    assert win.sb_adapt.isVisibleTo(win) and win.sb_adapt.text() == "Adapted to load: level 2"
    assert win.banner.level == "yellow" and "detection size to 480" in win.banner.text.text()
    win._on_snapshot(av_snap(level=0))  # restored
    assert "480" not in t.adapt_state.text() and theme.YELLOW not in t.adapt_state.styleSheet()
    assert not win.sb_adapt.isVisibleTo(win)
    win._on_snapshot(av_snap(issues=[ADAPT], level=0))  # the status came before the metrics' level
    assert t.adapt_state.text() == "Reduced detection size to 480 to keep 30 FPS."
    assert theme.YELLOW in t.adapt_state.styleSheet() and win.sb_adapt.text() == "Adapted to load"
    win._on_snapshot(av_snap(issues=[ADAPT], level=1, running=False))  # a stopped stream holds no step
    assert "480" not in t.adapt_state.text() and not win.sb_adapt.isVisibleTo(win)


class SleepStage:
    """Takes longer than a 30 FPS frame budget (the load itself: a lower bound on a frame's cost)."""

    name = "slow"

    def wants(self, opts):
        return True

    def process(self, ctx):
        time.sleep(0.060)

    def reset(self):
        pass

    def close(self):
        pass


def test_under_load_the_window_shows_the_step_and_pinning_clears_it(qtbot, make_window):
    from mirage_desktop.gui import theme

    win = make_window()
    t = win.toggles
    t.lipsync.click()  # the video alone: no microphone in this test
    p = _run(qtbot, win)
    qtbot.waitUntil(lambda: "Your settings in full" in t.adapt_state.text())  # running, nothing reduced
    p.stages = [p.stages[0], SleepStage(), *p.stages[1:]]
    # the engine's own status and metrics, through the controller's snapshots
    qtbot.waitUntil(lambda: t.adapt_state.text().startswith("Step ") and win.sb_adapt.isVisibleTo(win))
    assert theme.YELLOW in t.adapt_state.styleSheet() and "FPS" in t.adapt_state.text()
    level = int(win.sb_adapt.text().rsplit(" ", 1)[1])  # both from the same snapshot
    assert level >= 1 and t.adapt_state.text().startswith(f"Step {level}: ")
    t.adapt.click()  # pin my settings
    assert "Pinned" in t.adapt_state.text()  # at once: what the user asked for
    qtbot.waitUntil(lambda: p.ladder.level == 0 and not p.ladder.enabled)
    qtbot.waitUntil(lambda: not win.sb_adapt.isVisibleTo(win))
    assert "Pinned" in t.adapt_state.text() and theme.YELLOW not in t.adapt_state.styleSheet()
    assert not win.engine.settings.adapt_video and win.engine.pipeline is p
