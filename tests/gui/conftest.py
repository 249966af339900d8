"""Fixtures for the desktop window tests (pytest-qt, offscreen)."""

from __future__ import annotations


import pytest


#: how long a wait may take before the test fails. Every wait in these tests ends as soon as what it
#: waits for has happened; this bound only decides how long a broken build takes to fail, so it is
#: generous: on a loaded machine (CI, two cores, other suites running) an engine start can take
#: many seconds, and a tight bound would fail good work.
DEADLINE_MS = 120_000


@pytest.fixture(autouse=True)
def _deadlines_only_for_failures(request):
    """``qtbot.waitUntil`` / ``waitSignal`` / ``waitSignals`` with at least :data:`DEADLINE_MS`."""
    if "qtbot" not in request.fixturenames:
        yield
        return
    qtbot = request.getfixturevalue("qtbot")
    for name in ("waitUntil", "waitSignal", "waitSignals", "waitCallback"):
        real = getattr(qtbot, name, None)
        if real is None:
            continue

        def longer(*args, _real=real, timeout=5000, **kwargs):
            return _real(*args, timeout=max(int(timeout or 0), DEADLINE_MS), **kwargs)

        setattr(qtbot, name, longer)
    yield


@pytest.fixture
def settle(qtbot):
    """Wait until the window has nothing in flight: no background job (tracked ones: engine calls,
    loads, saves), no start/stop pending, the picker idle; their callbacks have run on the Qt thread.
    Use it where a test checks that something did *not* happen (instead of sleeping)."""
    from PySide6.QtCore import QCoreApplication

    def wait(win_or_controller):
        c = getattr(win_or_controller, "controller", win_or_controller)
        picker = getattr(win_or_controller, "picker", None)

        def idle():
            return c.jobs.busy == 0 and not c.run_pending and not (picker is not None and picker.is_busy)

        qtbot.waitUntil(idle)
        QCoreApplication.processEvents()  # callbacks already posted run now (they may start new jobs)
        qtbot.waitUntil(idle)

    return wait


@pytest.fixture
def gui_models(model_factory):
    """Synthetic ArcFace + inswapper with the real signatures; no det_10g, so the engine uses
    its real OpenCV fallback detector (which finds the astronaut's face and none in coffee)."""
    m = model_factory(None)
    return {"w600k_r50": m["w600k_r50"], "inswapper_128_fp16": m["inswapper_128_fp16"]}


@pytest.fixture
def make_engine(gui_models):
    from mirage_desktop import config
    from mirage_desktop.engine import Engine

    def make(overrides=None, settings=None):
        s = settings or config.load().settings
        return Engine(s, model_overrides=gui_models if overrides is None else overrides)

    return make


@pytest.fixture
def make_window(qtbot, make_engine, astronaut):
    """A themed MainWindow over an engine, with a still photo as the camera and no real sinks."""
    from mirage_desktop import config
    from mirage_desktop.gui.app import create_app
    from mirage_desktop.gui.window import MainWindow
    from mirage_desktop.vision.capture import ImageSource

    create_app()
    windows = []

    def make(engine=None, image=None, consent=True, notices=None):
        loaded = config.load()
        eng = engine or make_engine(settings=loaded.settings)
        src = ImageSource(astronaut if image is None else image, fps=30, realtime=True)
        win = MainWindow(eng, eng.settings, (notices or []) + loaded.notices, source=src, outputs=["null"],
                         list_cameras=False)
        win.picker.ask_consent = (lambda name, thumb: consent) if not callable(consent) else consent
        qtbot.addWidget(win)
        win.show()
        qtbot.waitUntil(win.controller.models_ready.is_set, timeout=15000)
        windows.append(win)
        return win

    yield make
    for w in windows:
        w.close()


@pytest.fixture
def av_snap():
    """``av_snap(av=(p50, p95) | None, mode=, running=, issues=, level=)``: an engine snapshot with
    the A/V offset (or without: the voice path off), the voice path's mode, status issues and the
    degrade ladder's level."""

    def snap(av=None, mode="lipsync", running=True, issues=(), level=0):
        stages = {"total": {"count": 100, "p50": 12.0, "p95": 20.0},
                  "av.video_latency": {"count": 100, "p50": 230.0, "p95": 250.0}}
        if av is not None:
            stages["av.offset_ms"] = {"count": 100, "p50": av[0], "p95": av[1]}
            stages["av.audio_latency"] = {"count": 100, "p50": 240.0, "p95": 260.0}
        return {"stages": stages, "counters": {"frames.out": 100},
                "status": {"running": running, "issues": list(issues)},
                "gauges": {"fps": 30.0, "av.mode": mode if av is not None else "none", "adapt.level": level},
                "health": {"level": "yellow" if issues else "green", "reasons": [i["message"] for i in issues]}}

    return snap
