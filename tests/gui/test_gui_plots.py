"""Latency plots and the health banner follow the engine's metrics."""

from __future__ import annotations

import math

import pytest


def _snap(t_p50, t_p95, fps, dropped, running=True, level="green", reasons=("running well",)):
    return {"stages": {"total": {"count": 100, "p50": t_p50, "p95": t_p95},
                       "swap": {"count": 100, "p50": t_p50 / 2, "p95": t_p95 / 2},
                       "voice.chunk": {"count": 5, "p50": 1.0, "p95": 2.0}},
            "counters": {"frames.out": 100, "dropped.worker_busy": dropped},
            "gauges": {"fps": fps}, "status": {"running": running},
            "health": {"level": level, "reasons": list(reasons)}}


def test_history_keeps_rolling_p50_p95_fps_and_drops():
    from mirage_desktop.gui.plots import MetricsHistory

    h = MetricsHistory(window_s=10, max_points=5)
    h.add(_snap(10, 20, 30, 0), now=0.0)
    h.add(_snap(12, 40, 25, 5), now=1.0)
    assert h.stage_names() == ["total", "swap"]  # voice stages are not video latency
    assert h.latest("total") == (12, 40) and h.latest("swap") == (6, 20)
    assert list(h.fps) == [30, 25] and list(h.dropped_rate) == [0.0, 5.0] and h.dropped_total == 5
    for i in range(10):
        h.add(_snap(1, 2, 30, 5), now=2.0 + i)
    assert len(h.t) == 5 and len(h.stages["total"][0]) == 5  # rolling
    # a stage that appears later lines up with the time axis
    s = _snap(1, 2, 30, 5)
    s["stages"]["enhance"] = {"count": 3, "p50": 7.0, "p95": 9.0}
    h.add(s, now=20.0)
    assert len(h.stages["enhance"][0]) == len(h.t) and h.latest("enhance") == (7.0, 9.0)


def test_plot_widgets_repaint_from_snapshots_and_banner_shows_health(qtbot, make_window):
    win = make_window()
    win.controller.timer.stop()  # only the snapshots below
    qtbot.waitUntil(lambda: not win.controller._snap_inflight, timeout=3000)
    lat0, rate0 = win.latency_plot.paints, win.rate_plot.paints
    win._on_snapshot(_snap(15, 35, 28, 3, level="yellow", reasons=["P95 latency 95 ms, above 80 ms"]))
    qtbot.waitUntil(lambda: win.latency_plot.paints > lat0 and win.rate_plot.paints > rate0, timeout=3000)
    assert win.history.latest("total") == (15, 35)
    assert win.banner.level == "yellow" and "P95 latency 95 ms" in win.banner.text.text()
    assert "28.0 FPS" == win.sb_fps.text()
    win._on_snapshot(_snap(15, 35, 28, 3, level="red", reasons=["pass-through: no swapper model"]))
    assert win.banner.level == "red" and win.banner.title.text() == "Needs attention"
    # the plot draws distinct pixels for the total's line
    img = win.latency_plot.grab().toImage()
    assert img.width() > 100
    colors = {img.pixelColor(x, y).name() for x in range(0, img.width(), 3) for y in range(0, img.height(), 3)}
    assert "#f2f4f8" in colors or len(colors) > 20


def test_plots_follow_the_running_engine(qtbot, make_window):
    win = make_window()
    win.start()
    qtbot.waitUntil(lambda: win.engine.running, timeout=10000)
    qtbot.waitUntil(lambda: win.history.updates >= 4 and "total" in win.history.stages, timeout=10000)
    p50, p95 = win.history.latest("total")
    assert not math.isnan(p50) and p95 >= p50 > 0
    snap = win.controller.last_snapshot
    assert snap["stages"]["total"]["count"] > 0
    assert win.history.fps[-1] > 0
    assert win.latency_plot.paints > 0 and win.rate_plot.paints > 0
    # no face chosen yet: frames pass through, and the banner says why
    assert win.banner.level == "red" and "no source face chosen" in win.banner.text.text()
    # a few times a second, not once per frame: one plot update per metrics snapshot, and the
    # snapshots come from the controller's timer
    timer = win.controller.timer
    assert timer.isActive() and 100 <= timer.interval() <= 1000
    snaps = []
    win.controller.snapshot_ready.connect(snaps.append)  # after the window's own slot
    u0, f0 = win.history.updates, win.controller.feed.frames_in
    qtbot.waitUntil(lambda: len(snaps) >= 3)
    assert win.history.updates - u0 == len(snaps)
    assert win.controller.feed.frames_in > f0  # frames kept coming meanwhile


def test_plots_show_the_last_10_or_60_seconds(qtbot, make_window, settle):
    """A slow first minute (a model warming up) does not squash a run that is fast now: the
    10 s view spans the newest points and scales to them; the choice is remembered."""
    win = make_window()
    win.controller.timer.stop()  # only the snapshots below
    qtbot.waitUntil(lambda: not win.controller._snap_inflight)
    h = win.history
    for t in range(61):  # a second apart: 500 ms at first, 5 ms for the last 10 s
        h.add(_snap(500.0 if t < 50 else 5.0, 900.0 if t < 50 else 8.0, 30, 0), now=float(t))
    lat, rate = win.latency_plot, win.rate_plot
    assert lat.span_s == rate.span_s == 10.0 and win.span_switch.buttons[10.0].isChecked()  # the default
    win.span_switch.buttons[60.0].click()
    assert lat.span_s == rate.span_s == 60.0 and not win.span_switch.buttons[10.0].isChecked()
    assert lat.scale()[1] == 1000.0  # the slow start is in view
    win.span_switch.buttons[10.0].click()
    assert lat.span_s == rate.span_s == 10.0
    assert win.span_switch.buttons[10.0].isChecked() and not win.span_switch.buttons[60.0].isChecked()
    assert lat.scale() == (1.0, 100.0)  # only the last 10 s decide the scale
    assert h.t[lat._first_visible()] == 50.0
    from PySide6.QtCore import QRectF

    xs = lat._xs(QRectF(0, 0, 600, 100))
    assert xs[-1] == 600 and abs(xs[50]) < 1e-9 and xs[0] < -2000  # 10 s fill the width
    n = lat.paints
    lat.repaint()
    assert lat.paints > n
    win.span_switch.buttons[60.0].click()
    settle(win)
    win.close()
    assert _saved_gui().get("plot_span") == 60.0
    win2 = make_window()
    assert win2.latency_plot.span_s == win2.rate_plot.span_s == 60.0 and win2.span_switch.buttons[60.0].isChecked()


def _saved_gui():
    import json

    from mirage_desktop import config

    return json.loads(config.settings_path().read_text()).get("extra", {}).get("gui", {})


# ---- the A/V offset (issue 10): a signed value, with a plot of its own ----------------------------
def _line_rows(plot) -> list[int]:
    """The rows of the plot's pixels in the A/V line's colour."""
    from PySide6.QtGui import QColor

    img = plot.grab().toImage()
    want = QColor(plot.COLOR)
    rows = []
    for y in range(img.height()):
        for x in range(0, img.width(), 2):
            c = img.pixelColor(x, y)
            if abs(c.red() - want.red()) + abs(c.green() - want.green()) + abs(c.blue() - want.blue()) < 40:
                rows.append(y)
    return rows


def _plot(qtbot, history):
    from mirage_desktop.gui.app import create_app
    from mirage_desktop.gui.plots import AvOffsetPlot

    create_app()
    plot = AvOffsetPlot(history)
    qtbot.addWidget(plot)
    plot.resize(320, 220)
    return plot


def test_the_av_offset_is_kept_apart_from_the_stage_latencies(av_snap):
    from mirage_desktop.gui.plots import AV_OFFSET, MetricsHistory

    h = MetricsHistory(window_s=10, max_points=5)
    h.add(av_snap(av=(-40.0, -12.0)), now=0.0)
    h.add(av_snap(), now=1.0)  # the voice went off
    assert h.stage_names() == ["total"]  # a signed offset is no stage latency on a log axis
    assert all(math.isnan(v) for v in h.latest(AV_OFFSET))  # nothing measured now
    assert list(h.av_offset[0])[0] == -40.0 and math.isnan(list(h.av_offset[0])[1])
    assert h.av_mode == "none"
    for i in range(6):
        h.add(av_snap(av=(5.0, 9.0), mode="convert"), now=2.0 + i)
    assert len(h.av_offset[0]) == len(h.t) == 5 and h.latest(AV_OFFSET) == (5.0, 9.0)  # rolling, in step
    assert h.av_mode == "convert"


def test_the_av_plot_draws_negative_and_positive_offsets_on_their_side_of_zero(qtbot, av_snap):
    from mirage_desktop.gui.plots import MetricsHistory, _linear

    h = MetricsHistory(window_s=10)
    for i in range(10):
        h.add(av_snap(av=(-40.0, -12.0)), now=float(i))  # the video leaves early
    plot = _plot(qtbot, h)
    assert plot.scale() == 50.0  # -50 .. +50 ms holds them
    area = plot.plot_area()
    zero = _linear(area, 50.0, -50.0)(0.0)
    assert zero == pytest.approx(area.center().y())
    rows = _line_rows(plot)
    assert rows and min(rows) > zero + 5  # every point of the line below 0
    assert plot.notes == ("P50 -40 ms · P95 -12 ms", "video 230 / voice 240 ms")
    assert plot.title == "A/V offset · lip-sync mic"
    for i in range(10, 25):
        h.add(av_snap(av=(60.0, 90.0), mode="convert"), now=float(i))  # late now, and more of it
    assert plot.scale() == 100.0  # the axis grows to hold +90 ms
    rows = _line_rows(plot)
    assert rows and max(rows) < _linear(area, 100.0, -100.0)(0.0) - 5  # all above 0
    assert plot.notes[0] == "P50 +60 ms · P95 +90 ms" and plot.title == "A/V offset · voice changer"


def test_the_av_plot_copes_without_an_offset(qtbot, av_snap):
    from mirage_desktop.gui.plots import MetricsHistory

    h = MetricsHistory(window_s=10)
    plot = _plot(qtbot, h)
    n = plot.paints
    assert _line_rows(plot) == [] and plot.paints > n  # painted, empty: no snapshot at all yet
    for i in range(5):
        h.add(av_snap(), now=float(i))  # running, voice off: no offset measured
    assert not plot.has_data() and plot.scale() == 50.0
    n = plot.paints
    assert _line_rows(plot) == [] and plot.paints > n
    assert plot.notes == ("voice off", "") and plot.title == "A/V offset"
    h.add(av_snap(av=(-8.0, 4.0)), now=5.0)
    h.add(av_snap(av=(-6.0, 3.0)), now=6.0)
    h.add(av_snap(), now=7.0)  # and off again: the points measured stay in view
    assert plot.has_data() and _line_rows(plot) and plot.notes == ("voice off", "")
